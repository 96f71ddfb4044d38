"""Memory cores with a torch.nn.LSTM-shaped API: LSTM, GRU, UR-LSTM, UR-GRU, the gate grid, an MLP and
a frame stack."""

from .base import CoreMixin, State
from .gated_gru import URGRU, GatedGRU
from .gated_lstm import URLSTM, GatedLSTM
from .mlp import MLPCore
from .registry import CORE_SPECS, check_core, make_core
from .stack import StackCore
from .torch_rnn import GRU, LSTM

__all__ = ["CORE_SPECS", "CoreMixin", "GRU", "GatedGRU", "GatedLSTM", "LSTM", "MLPCore", "StackCore", "State",
           "URGRU", "URLSTM", "check_core", "make_core"]
