from .awd_lstm import AWDLSTM, LMOutput, LMState, activation_regularization, build_model, detach_state, token_nll
from .lstm import lstm_layer
from .static_weights import static_weights

__all__ = [
    "AWDLSTM", "LMOutput", "LMState", "activation_regularization", "build_model", "detach_state",
    "token_nll", "lstm_layer", "static_weights",
]
