"""The app side: the TCP server nodes dial, dispatch by credit, feedback routing."""

from jobreactor.distributor.distributor import Distributor

__all__ = ["Distributor"]
