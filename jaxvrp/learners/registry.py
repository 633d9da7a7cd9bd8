"""The one registry of learners (`jaxvrp.learners.protocol.Learner`), by name.

    from jaxvrp.learners import registry
    learner = registry.get("vrp_sam")
    registry.register(my_learner)          # a learner defined anywhere, e.g. in a test
    registry.names()                       # every known name

Built-in learners are listed here with the module that defines them and are imported on
first use, so importing the registry stays cheap. A module registers its learner at import
time with `register(LEARNER)`. `get(name, module=...)` imports `module` first when the name is
not yet known (how a learner checkpoint written by a user's learner is read back).
"""

import importlib

from jaxvrp.learners.protocol import Learner

# name -> module whose import registers it
BUILTIN = {
    "vrp_sam": "jaxvrp.learners.vrp",
    "prosam": "jaxvrp.learners.prosam",
    "hsnet": "jaxvrp.learners.hsnet",
    "samic": "jaxvrp.learners.samic",
    "gp_sam": "jaxvrp.baselines",
    "oracle_box": "jaxvrp.baselines",
    "persam": "jaxvrp.learners.persam",
    "persam_f": "jaxvrp.learners.persam",
    "matcher": "jaxvrp.learners.matcher",
    "ssprompt": "jaxvrp.learners.ssprompt",
}

_LEARNERS: dict[str, Learner] = {}


def register(learner: Learner, *, replace: bool = False) -> Learner:
    """Add `learner` under `learner.name`; a different learner of the same name is an error
    unless `replace`."""
    if not isinstance(learner, Learner):
        raise TypeError(f"register() takes a Learner, got {type(learner).__name__}")
    old = _LEARNERS.get(learner.name)
    if old is not None and old is not learner and not replace:
        raise ValueError(f"a different learner is already registered as {learner.name!r}")
    _LEARNERS[learner.name] = learner
    return learner


def unregister(name: str) -> None:
    _LEARNERS.pop(name, None)


def get(name: str, *, module: str | None = None) -> Learner:
    """The learner registered as `name`, importing its module if needed."""
    if name not in _LEARNERS:
        where = BUILTIN.get(name) or module
        if where:
            importlib.import_module(where)
    if name not in _LEARNERS:
        raise ValueError(f"unknown learner {name!r}; known: {names()}")
    return _LEARNERS[name]


def names() -> list[str]:
    """Every built-in and registered learner name, sorted."""
    return sorted(set(BUILTIN) | set(_LEARNERS))


def all_learners() -> list[Learner]:
    """Every built-in and registered learner (importing the built-in modules)."""
    return [get(n) for n in names()]
