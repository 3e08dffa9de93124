from rl.grading.answers import answers_equal, extract_final_answer

__all__ = ["answers_equal", "extract_final_answer"]
