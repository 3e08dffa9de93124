from rl.grading.answers import (answers_equal, extract_final_answer, extract_gsm8k_answer, normalize_number,
                                numbers_equal)
from rl.grading.rule_critic import RULE_KINDS, RuleCritic, has_rule_utility

__all__ = ["RULE_KINDS", "RuleCritic", "answers_equal", "extract_final_answer", "extract_gsm8k_answer", "normalize_number", "has_rule_utility", "numbers_equal"]
