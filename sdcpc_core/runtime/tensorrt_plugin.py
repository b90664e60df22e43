"""The TensorRT plugin of the window attention custom op ``sdcpc::window_attention``.

A program exported from a CUDA model with the fused switch on
(``sdcpc_core.ops.use_fused_window_attention(True)``) holds one ``sdcpc.window_attention`` node per
call. ``register_tensorrt_plugin()`` makes Torch-TensorRT turn that node into a TensorRT plugin
that runs the Triton kernel inside the engine; without it, Torch-TensorRT runs the node in
PyTorch, between two engines. Call it once before compiling such a program
(``tensorrt_backend.TensorRTBackend`` does not call it).
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass

from ..ops.window_attention.triton import OP_NAME

__all__ = ["PluginRegistration", "register_tensorrt_plugin"]


@dataclass(frozen=True)
class PluginRegistration:
    """Result of :func:`register_tensorrt_plugin`; true when the plugin and converter are registered."""

    registered: bool
    reason: str

    def __bool__(self) -> bool:
        return self.registered


_PLUGIN_LOCK = threading.Lock()
_PLUGIN_DONE: list[PluginRegistration] = []


def register_tensorrt_plugin() -> PluginRegistration:
    """Registers ``sdcpc::window_attention`` as a Torch-TensorRT auto-generated (QDP, JIT) plugin.

    Uses ``torch_tensorrt.dynamo.conversion.plugins``: ``generate_plugin`` builds the TensorRT
    plugin (output shape from the fake kernel; at engine run time it calls the custom op, i.e. the
    Triton kernel, on TensorRT's stream) and ``generate_plugin_converter`` the converter that puts
    it into the network. Needs Torch-TensorRT with plugin support and TensorRT >= 10.7. Call it
    once before compiling a program exported with the fused switch on. Returns a
    :class:`PluginRegistration` that is false (with the reason) when that is not possible; calling
    it again after a success returns the first result.
    """
    with _PLUGIN_LOCK:
        if _PLUGIN_DONE:
            return _PLUGIN_DONE[0]
        try:
            import torch_tensorrt  # noqa: F401
        except Exception as error:  # ImportError, or a broken CUDA / TensorRT install
            return PluginRegistration(False, f"torch_tensorrt is not importable ({type(error).__name__}: {error})")
        try:
            from torch_tensorrt.dynamo.conversion import plugins
        except Exception as error:
            return PluginRegistration(False, "this torch_tensorrt has no auto-generated plugin support "
                                             f"({type(error).__name__}: {error})")
        try:
            import tensorrt.plugin  # noqa: F401  (TensorRT >= 10.7: the QDP plugin registry)
        except Exception as error:
            try:
                import tensorrt_bindings.plugin  # noqa: F401
            except Exception:
                return PluginRegistration(False, "TensorRT has no Python plugin module (needs TensorRT >= 10.7; "
                                                 f"{type(error).__name__}: {error})")
        generate_plugin = getattr(plugins, "generate_plugin", None)
        generate_converter = getattr(plugins, "generate_plugin_converter", None)
        if generate_plugin is None or generate_converter is None:
            return PluginRegistration(False, "torch_tensorrt.dynamo.conversion.plugins lacks generate_plugin / "
                                             "generate_plugin_converter")
        options = {"supports_dynamic_shapes": True, "requires_output_allocator": False}
        try:
            accepted = inspect.signature(generate_converter).parameters
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
                options = {name: value for name, value in options.items() if name in accepted}
        except (TypeError, ValueError):
            pass
        try:
            generate_plugin(OP_NAME)
            generate_converter(OP_NAME, **options)
        except Exception as error:
            return PluginRegistration(False, f"plugin generation failed ({type(error).__name__}: {error})")
        result = PluginRegistration(True, f"registered {OP_NAME} as a Torch-TensorRT plugin")
        _PLUGIN_DONE.append(result)
        return result
