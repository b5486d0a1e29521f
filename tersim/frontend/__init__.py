"""Frontend: a PyTorch model (torch.export archive, TorchScript, opt-in pickle) -> tersim IR Graph."""
from tersim.frontend.float_exec import execute_float
from tersim.frontend.ir import Graph, Node
from tersim.frontend.loader import import_model
from tersim.frontend.lower import lower_exported, lower_module

__all__ = ["import_model", "lower_module", "lower_exported", "execute_float", "Graph", "Node"]
