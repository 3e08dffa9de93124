from rl.grading.answers import (answers_equal, extract_final_answer, extract_gsm8k_answer, normalize_number,
                                numbers_equal)
from rl.grading.rule_critic import RULE_KINDS, RuleCritic, check_rule_config, has_rule_utility

__all__ = ["RULE_KINDS", "RuleCritic", "answers_equal", "check_rule_config", "extract_final_answer", "extract_gsm8k_answer", "normalize_number", "has_rule_utility", "numbers_equal"]
