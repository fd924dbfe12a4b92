from .awd_lstm import AWDLSTM, LMOutput, LMState, activation_regularization, build_model, detach_state, token_nll
from .lstm import lstm_layer, lstm_layer_loop
from .per_stream_lstm import factored_weight_gradients
from .static_weights import static_weights

__all__ = [
    "AWDLSTM", "LMOutput", "LMState", "activation_regularization", "build_model", "detach_state",
    "token_nll", "factored_weight_gradients", "lstm_layer", "lstm_layer_loop", "static_weights",
]
