"""The farm as a service, one object per concern (``submit``, ``feed``, ``reconcile``, ``views``,
``control``); ``Farm`` builds them and offers their verbs."""

from farm.service.farm import Farm
from farm.service.handle import Campaign
from farm.service.submit import Submitted

__all__ = ["Campaign", "Farm", "Submitted"]
