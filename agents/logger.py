"""The learners' run folder: the TensorBoard writer with fixed tag prefixes and the JSON files.

One implementation, in ``agents.runfolder`` (shared with ``supervised``); this module names it for the
learners (``Logger``, with ``purge_step`` for a resumed run).
"""

from agents.runfolder import PREFIXES, git_commit, make_run_dir, read_json, write_json
from agents.runfolder import Writer as Logger

__all__ = ["PREFIXES", "Logger", "git_commit", "make_run_dir", "read_json", "write_json"]
