"""Every hook minidl calls, with when, what each argument is, and how results combine.

Plugins implement hooks with the ``minidl.hookimpl`` marker and are found
through the ``minidl`` entry-point group (third-party) or minidl's own list of
built-in plugins. Every hook here is a *registration* hook: it is called once
per plugin when the matching registry is first needed (building a model,
creating an optimizer, ``minidl plugins``), never per op or per step.

Each hook receives one argument, ``register``, a function::

    register(name, factory, *, aliases=(), **options)

``name`` is what YAML files and the CLI use. ``factory(**params)`` builds the
thing; the parameters it accepts, their defaults and their types are read
from its signature and annotations unless ``schema=`` is given. Results do
not combine: every plugin's registrations are collected, and two plugins
registering one name is an error naming both. A plugin whose hook raises
has none of that hook's registrations kept, and is reported as failed.

Example plugin module::

    import minidl

    @minidl.hookimpl
    def minidl_register_layers(register):
        register("swish", Swish, examples=[{"input_shape": (2, 3, 4, 4)}])
"""
from __future__ import annotations

import pluggy

PROJECT = "minidl"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["hookspec", "hookimpl", "PROJECT", "REGISTRY_HOOKS"]


@hookspec
def minidl_register_layers(register):
    """Register layer types for YAML models.

    :param register: ``register(name, factory, *, aliases=(), schema=None, examples=None,
        differentiable=True)``. ``factory(**yaml_params)`` returns a
        :class:`minidl.nn.Module`. ``examples`` is a list of
        ``{"params": {...}, "input_shape": (N, ...)}`` used by the conformance
        test (gradient check) and documentation; without it, the layer is
        checked with no parameters on an input of shape (2, 3, 5, 5).
        ``differentiable=False`` excludes a layer from gradient checks.
        ``onnx=convert`` gives the layer's ONNX form for ``mdl.onnx.export``:
        ``convert(graph, node, inputs)`` adds ONNX nodes and returns the name
        of the output value (see :class:`minidl.onnx.OnnxGraph`); without it
        the export refuses the layer, naming it.

    Called once per plugin when the layer registry is first built.
    """


@hookspec
def minidl_register_optimizers(register):
    """Register optimizers.

    :param register: ``register(name, factory)``; ``factory(params, **options)``
        returns a :class:`minidl.optim.Optimizer` over ``params`` (Parameters or
        parameter-group dicts).

    Called once per plugin when the optimizer registry is first built.
    """


@hookspec
def minidl_register_schedulers(register):
    """Register learning-rate schedulers.

    :param register: ``register(name, factory)``; ``factory(optimizer, **options)``
        returns a :class:`minidl.optim.Scheduler`.

    Called once per plugin when the scheduler registry is first built.
    """


@hookspec
def minidl_register_initializers(register):
    """Register weight initializers (YAML ``weight_init:`` / ``bias_init:``).

    :param register: ``register(name, factory)``; ``factory(**options)``
        returns a callable ``init(shape, dtype, device, fan_in=None, fan_out=None) -> array``.

    Called once per plugin when the initializer registry is first built.
    """


@hookspec
def minidl_register_device_strategies(register):
    """Register device-split strategies (YAML ``strategy:``, CLI ``--strategy``).

    :param register: ``register(name, factory)``; ``factory(devices, **options)``
        returns a :class:`minidl.parallel.Strategy` over ``devices`` (a list of
        :class:`minidl.Device`). A strategy's ``layer_modes(model)`` gives each
        layer ``"data"`` (split the batch), ``"model"`` (split the channels, as
        the layer declares) or ``"home"`` (the first device); its ``place(model)``
        splits the model accordingly. YAML options other than ``type`` are
        passed as keyword arguments.

    Called once per plugin when the strategy registry is first built; the
    strategy is made once per model, never per step.
    """


@hookspec
def minidl_register_datasets(register):
    """Register datasets (YAML ``train: data:``, CLI ``--data``).

    :param register: ``register(name, factory)``; ``factory(split="train", **options)``
        returns a dataset (``len()`` and integer indexing to ``(input, label)``).

    Called once per plugin when the dataset registry is first built.
    """


@hookspec
def minidl_register_transforms(register):
    """Register data transforms (YAML ``train: augmentation:``).

    :param register: ``register(name, factory)``; ``factory(**options)`` returns
        a :class:`minidl.data.transforms.Transform`: ``transform(images, rng)``
        maps a batch of images (N, C, H, W) to a batch, drawing any randomness
        from ``rng``; crops and flips may also ``plan`` their window so the
        loader copies each image once on uint8, and transforms with
        statistics (a mean image) ``fit`` them and keep them in ``state_dict``.

    Called once per plugin when the transform registry is first built.
    """


@hookspec
def minidl_register_conv_algorithms(register):
    """Register convolution algorithms (YAML ``algorithm:`` on a conv2d layer, ``train: {conv_algorithm: ...}``,
    CLI ``--conv-algorithm``, ``F.conv2d(..., algorithm=...)``).

    :param register: ``register(name, factory, *, examples=None)``. ``factory()``
        returns a :class:`minidl.functions.ConvAlgorithm`: it says which
        convolutions it computes (``unsupported(problem)`` gives a reason when it
        does not), how it ranks under the default rule (``priority(problem)``),
        whether it is ``deterministic``, the workspace it needs, and computes the
        forward pass, the input gradient and the weight gradient.
        ``examples`` is a list of ``{"x_shape": (N, C, H, W), "w_shape": (O, C/G, kh,
        kw), "stride": .., "padding": .., "dilation": .., "groups": ..}`` that the
        conformance suite checks against the reference ``im2col_gemm`` in addition
        to its own shapes.

    Called once per plugin when the algorithm registry is first built (the
    first convolution, or ``minidl plugins``); each factory is called once.
    Example::

        @minidl.hookimpl
        def minidl_register_conv_algorithms(register):
            register("direct", Direct, examples=[{"x_shape": (2, 3, 8, 8), "w_shape": (4, 3, 3, 3)}])
    """


# registry kind -> hook name; the order is the order `minidl plugins` shows them in
REGISTRY_HOOKS = {
    "layers": "minidl_register_layers",
    "optimizers": "minidl_register_optimizers",
    "schedulers": "minidl_register_schedulers",
    "initializers": "minidl_register_initializers",
    "device_strategies": "minidl_register_device_strategies",
    "datasets": "minidl_register_datasets",
    "transforms": "minidl_register_transforms",
    "conv_algorithms": "minidl_register_conv_algorithms",
}
