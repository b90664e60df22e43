"""What ``launch/segment.launch.py`` gives the segment node, as plain functions (no ``launch`` import).

Launch arguments that mirror node parameters (``OVERRIDES``: backend, device, use_compressed) default
to an empty string, which means "not given". ``node_parameters`` puts the parameter file first and
then only the arguments the user gave, so those override the file and nothing else does: whatever
the file sets (e.g. ``backend: onnxruntime``) holds unless the launch command says otherwise, and
what neither sets keeps the node's own default. ``node_remappings`` maps the node's relative topics
to ``image_topic``; ``camera_info`` is remapped only when ``camera_info_topic`` is given, otherwise the
node takes the image topic's sibling (``/front/image_raw`` -> ``/front/camera_info``).
"""
from __future__ import annotations

NOT_GIVEN = ""
# Launch argument -> the node parameter's type (launch arguments are strings).
OVERRIDES = {"backend": str, "device": str, "use_compressed": bool}
_BOOLEANS = {"true": True, "false": False}


def node_parameters(params_file: str, arguments: dict[str, str]) -> list:
    """``[params_file]`` followed by ``{parameter: value}`` of the ``OVERRIDES`` arguments that were given
    (non-empty), typed; ``ValueError`` naming an argument whose value is not of its parameter's type."""
    given = {}
    for name, kind in OVERRIDES.items():
        text = str(arguments.get(name, NOT_GIVEN)).strip()
        if text == NOT_GIVEN:
            continue
        if kind is bool:
            if text.lower() not in _BOOLEANS:
                raise ValueError(f"launch argument {name}:={text} must be true or false (or left out: then the "
                                 "parameter file decides)")
            given[name] = _BOOLEANS[text.lower()]
        else:
            given[name] = text
    parameters: list = [params_file] if params_file else []
    return [*parameters, given] if given else parameters


def node_remappings(image_topic: str, camera_info_topic: str = NOT_GIVEN) -> list[tuple[str, str]]:
    """The node's topic remappings: ``image`` and ``image/compressed`` to ``image_topic`` (and its
    ``/compressed`` sibling), ``camera_info`` only when ``camera_info_topic`` is given."""
    remappings = [("image", image_topic), ("image/compressed", f"{image_topic.rstrip('/')}/compressed")]
    if camera_info_topic.strip():
        remappings.append(("camera_info", camera_info_topic.strip()))
    return remappings


__all__ = ["NOT_GIVEN", "OVERRIDES", "node_parameters", "node_remappings"]
