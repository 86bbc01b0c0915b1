"""The farm as a service, split by verb: ``submit``, ``views``, ``control``; ``Farm`` holds them."""

from farm.service.farm import Farm
from farm.service.handle import Campaign
from farm.service.submit import Submitted

__all__ = ["Campaign", "Farm", "Submitted"]
