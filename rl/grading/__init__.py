from rl.grading.answers import (answers_equal, extract_final_answer, extract_gsm8k_answer, normalize_number,
                                numbers_equal)

__all__ = ["answers_equal", "extract_final_answer", "extract_gsm8k_answer", "normalize_number", "numbers_equal"]
