"""minidl's built-in weight initializers, registered as a plugin."""
import minidl
from minidl.nn import init


@minidl.hookimpl
def minidl_register_initializers(register):
    register("normal", init.normal)
    register("uniform", init.uniform)
    register("constant", init.constant)
    register("xavier_uniform", init.xavier_uniform, aliases=("xavier", "glorot_uniform"))
    register("xavier_normal", init.xavier_normal, aliases=("glorot_normal",))
    register("kaiming_normal", init.kaiming_normal, aliases=("kaiming", "he_normal"))
    register("kaiming_uniform", init.kaiming_uniform, aliases=("he_uniform",))
    register("fan_in_uniform", init.fan_in_uniform, aliases=("pytorch_default",))
    register("zeros", lambda: init.constant(0.0))
    register("ones", lambda: init.constant(1.0))
