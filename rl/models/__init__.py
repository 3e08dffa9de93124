from rl.models.backend import StepSample
from rl.models.critic import ValueCritic
from rl.models.device import pick_device
from rl.models.policy import Policy

__all__ = ["Policy", "StepSample", "ValueCritic", "pick_device"]
