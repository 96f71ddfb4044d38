"""Memory cores with a torch.nn.LSTM-shaped API: LSTM, GRU, UR-LSTM, UR-GRU, the gate grid and an MLP."""

from .base import CoreMixin, State
from .gated_gru import URGRU, GatedGRU
from .gated_lstm import URLSTM, GatedLSTM
from .mlp import MLPCore
from .registry import CORE_SPECS, make_core
from .torch_rnn import GRU, LSTM

__all__ = ["CORE_SPECS", "CoreMixin", "GRU", "GatedGRU", "GatedLSTM", "LSTM", "MLPCore", "State", "URGRU",
           "URLSTM", "make_core"]
