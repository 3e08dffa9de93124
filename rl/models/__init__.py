from rl.models.critic import ValueCritic
from rl.models.device import pick_device
from rl.models.policy import Policy, StepSample

__all__ = ["Policy", "StepSample", "ValueCritic", "pick_device"]
