"""``--use-plugin``: a Nipype execution plugin and its arguments, read from a YAML or JSON file as fMRIPrep's."""

from __future__ import annotations

from pathlib import Path

from msynth.utils.errors import UsageError

__all__ = ["MULTIPROC_PLUGINS", "load_plugin_file"]

#: Plugins whose ``n_procs`` and ``memory_gb`` default to ``--nprocs`` and ``--mem`` when the file does not set them.
MULTIPROC_PLUGINS = frozenset({"MultiProc", "LegacyMultiProc"})


def load_plugin_file(path: Path) -> tuple[str, dict]:
    """Read and check a ``{plugin: NAME, plugin_args: {...}}`` file, before any work.

    Parameters
    ----------
    path
        The ``--use-plugin`` file (YAML, of which JSON is a subset).

    Returns
    -------
    tuple
        The plugin's name, as ``Workflow.run(plugin=...)`` takes it, and its arguments (empty when not given).

    Raises
    ------
    UsageError
        One line naming the file and the cause: missing or unreadable, not YAML/JSON, not a mapping with ``plugin``,
        a plugin Nipype does not have, or one that submits the graph and returns before it ran (``*Graph``).
    """
    import yaml
    from nipype.pipeline import plugins
    from nipype.pipeline.plugins.base import GraphPluginBase

    where = f"--use-plugin {path}"
    try:
        settings = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{where} does not exist — pass a YAML or JSON file such as {{plugin: SLURM}}") from None
    except OSError as error:
        raise UsageError(f"{where} cannot be read ({error.strerror or error}) — check the file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{where} is not valid YAML or JSON{line} — write {{plugin: NAME, plugin_args: {{...}}}}"
                         ) from None
    if not isinstance(settings, dict) or not isinstance(settings.get("plugin"), str):
        raise UsageError(f"{where} names no plugin — write {{plugin: NAME, plugin_args: {{...}}}}")
    unknown = set(settings) - {"plugin", "plugin_args"}
    if unknown:
        raise UsageError(f"{where} has unknown key(s) {', '.join(sorted(map(str, unknown)))} — only plugin and "
                         "plugin_args are read")
    name, arguments = settings["plugin"], settings.get("plugin_args") or {}
    available = sorted(n.removesuffix("Plugin") for n in dir(plugins) if n.endswith("Plugin") and n != "Plugin")
    plugin = getattr(plugins, f"{name}Plugin", None)
    if not isinstance(plugin, type):
        raise UsageError(f"{where}: Nipype has no plugin {name!r} (it has: {', '.join(available)})")
    if issubclass(plugin, GraphPluginBase):
        instead = name.removesuffix("Graph") if name.endswith("Graph") else "SLURM"
        raise UsageError(f"{where}: the {name} plugin submits the workflow and returns before it ran, and msynth "
                         f"publishes a participant's outputs only once its steps finished — use {instead} instead "
                         "(one job a step, and msynth waits for them)")
    if not isinstance(arguments, dict):
        raise UsageError(f"{where}: plugin_args must be a mapping of argument names to values")
    return name, arguments
