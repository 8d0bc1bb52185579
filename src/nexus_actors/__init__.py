"""nexus-actors: a realtime room server for virtual tabletops, built as actors on Trio."""

from .actors.supervisor import Server as Server, serve as serve
from .config import Config as Config
from .deps import Deps as Deps
from .errors import Code as Code, NexusError as NexusError

__version__ = "0.1.0"
