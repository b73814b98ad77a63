"""The mapping interface: a lowering strategy with its own knobs, and the registry.

A *mapping* decides how the ops of a GPT model are laid onto the PEs of a wafer: which PEs
hold which tokens, features and weights, and how data moves between them. Every mapping
lowers the same model to a :class:`wse_sim.program.Program`, so every timing backend can time
it and the numerics can compute its logits in its own reduction order.

A mapping is named on the command line as ``NAME[:knob=value,...]`` (``summa:reduce=tree``)
and in Python with :func:`parse_mapping`. ``wse-sim mappings list`` prints the registry
(:func:`list_mappings`): one line per mapping with its description, source and knobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from wse_sim.errors import ConfigError

# name -> Mapping subclass, filled by :func:`register`
MAPPINGS: dict[str, type[Mapping]] = {}


@dataclass(frozen=True)
class Knob:
    """One tunable of a mapping.

    Attributes:
        name: the knob's name on the command line (``reduce``).
        kind: ``int``, ``float`` or ``str``.
        default: the value used when the knob is not given (``None``: chosen by the mapping).
        doc: one line: what it sets, with units.
        choices: allowed values for a ``str`` knob (empty: any).
        lo, hi: allowed range for a number knob (inclusive; ``None``: unbounded).
    """

    name: str
    kind: str
    default: Any
    doc: str
    choices: tuple = ()
    lo: float | None = None
    hi: float | None = None

    def allowed(self) -> str:
        """The allowed values, in words, for error messages and ``mappings list``."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "str":
            return "a string"
        lo = "" if self.lo is None else f" >= {self.lo:g}"
        hi = "" if self.hi is None else f" <= {self.hi:g}"
        what = "an integer" if self.kind == "int" else "a number"
        return f"{what}{lo}{' and' if lo and hi else ''}{hi}"

    def parse(self, mapping: str, raw: Any) -> Any:
        """``raw`` (a string from the command line, or a Python value) as this knob's value.

        Raises:
            ConfigError: naming the mapping, the knob, the value and what is allowed.
        """
        bad = ConfigError(f"mapping {mapping}: {self.name}={raw!r} must be {self.allowed()}")
        if self.kind == "str":
            val = str(raw)
            if self.choices and val not in self.choices:
                raise bad
            return val
        try:
            if isinstance(raw, bool):
                raise ValueError
            if self.kind == "int":
                val = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
                if val is None or (isinstance(raw, str) and not raw.strip().lstrip("+-").isdigit()):
                    raise ValueError
            else:
                val = float(raw)
                if val != val:  # NaN
                    raise ValueError
        except (TypeError, ValueError):
            raise bad from None
        if (self.lo is not None and val < self.lo) or (self.hi is not None and val > self.hi):
            raise bad
        return val


class Mapping:
    """Base class of every mapping: a lowering strategy with validated knobs.

    Subclasses set the class attributes and implement :meth:`lower` and
    :meth:`max_batch_single_micro`.

    Class attributes:
        name: registry key (``weight_streaming``, ``summa`` ...).
        description: one line for ``wse-sim mappings list``.
        source: where the algorithm comes from (paper, textbook), cited.
        mode: execution mode, ``weight_streaming`` (weights from MemoryX, one layer at a time
            on the whole wafer) or ``layer_pipelined`` (weights resident in SRAM).
        knobs: the tunables.
        families: the model families (:data:`gpt_workload.models.FAMILIES` keys) this
            mapping lowers; :meth:`check_family` refuses the others.

    Attributes:
        values: every knob's value (defaults filled in).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    mode: ClassVar[str] = "weight_streaming"
    knobs: ClassVar[tuple[Knob, ...]] = ()
    families: ClassVar[tuple[str, ...]] = ("gpt2",)

    def accepts(self, cfg) -> bool:
        """Whether this mapping (with its knob values) lowers ``cfg``'s family."""
        return cfg.family in self.families

    def check_family(self, cfg) -> None:
        """Refuse a family this mapping does not lower, in one line.

        Raises:
            ConfigError: ``mapping X does not lower family Y yet; use weight_streaming``.
        """
        if not self.accepts(cfg):
            raise ConfigError(
                f"mapping {self.spec} does not lower family {cfg.family} yet; use "
                "weight_streaming"
            )

    def __init__(self, **values: Any):
        known = {k.name: k for k in self.knobs}
        for key in values:
            if key not in known:
                allowed = ", ".join(known) or "none"
                raise ConfigError(f"mapping {self.name}: unknown knob {key!r}; allowed: {allowed}")
        self.values = {
            k.name: (k.parse(self.name, values[k.name]) if k.name in values else k.default)
            for k in self.knobs
        }

    def __getitem__(self, knob: str) -> Any:
        return self.values[knob]

    @property
    def spec(self) -> str:
        """``NAME[:knob=value,...]`` with the knobs that differ from their defaults."""
        given = [
            f"{k.name}={self.values[k.name]}"
            for k in self.knobs
            if self.values[k.name] != k.default
        ]
        return self.name + (":" + ",".join(given) if given else "")

    def __repr__(self) -> str:
        return f"<mapping {self.spec}>"

    def lower(self, cfg, arch, batch: int, seq_len: int, precision: str):
        """Lower a forward pass of ``batch`` x ``seq_len`` tokens to a Program.

        The Program's ``mapping`` is :attr:`spec`.

        Raises:
            ConfigError: bad batch, seq_len or knob combination; FitError: does not fit.
        """
        raise NotImplementedError

    def numerics(self, program, cfg, weights, tokens, precision: str):
        """Compute the logits of ``tokens`` [K, T] on this mapping's per-PE layout and in its
        reduction order; returns a :class:`gpt_workload.numerics.NumericsResult`.

        The default runs the Program's first micro-batch kernels with
        :func:`gpt_workload.numerics.run_numerics`; a mapping whose kernels differ from the
        weight-streaming op kernels overrides it.

        Raises:
            ConfigError: tokens of the wrong shape, dtype or range.
        """
        from gpt_workload.numerics import run_numerics

        return run_numerics(program, cfg, weights, tokens, precision)

    def max_batch_single_micro(self, cfg, arch, seq_len: int, precision: str) -> int:
        """Largest batch (sequences) that runs as one micro-batch on ``arch``.

        Raises:
            FitError: not even one sequence fits.
        """
        raise NotImplementedError


def register(cls: type[Mapping]) -> type[Mapping]:
    """Class decorator: add a mapping to :data:`MAPPINGS` under its ``name``."""
    if not cls.name or cls.name in MAPPINGS:
        raise ValueError(f"mapping name {cls.name!r} empty or registered twice")
    MAPPINGS[cls.name] = cls
    return cls


def parse_mapping(spec: str | Mapping) -> Mapping:
    """``NAME[:knob=value,...]`` -> a :class:`Mapping` instance (a Mapping passes through).

    Raises:
        ConfigError: unknown mapping or knob, malformed spec, knob value out of range.
    """
    if isinstance(spec, Mapping):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"mapping={spec!r} must be NAME[:knob=value,...]; allowed names: {', '.join(MAPPINGS)}"
        )
    name, _, rest = spec.strip().partition(":")
    if name not in MAPPINGS:
        raise ConfigError(f"mapping={name!r} is unknown; allowed: {', '.join(MAPPINGS)}")
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = part.partition("=")
        if not eq or not key.strip() or not val.strip():
            raise ConfigError(f"mapping {name}: {part!r} must be knob=value")
        if key.strip() in values:
            raise ConfigError(f"mapping {name}: knob {key.strip()!r} given twice")
        values[key.strip()] = val.strip()
    return MAPPINGS[name](**values)


def list_mappings() -> list[dict]:
    """One dict per registered mapping: name, mode, description, source and knobs."""
    return [
        {
            "name": cls.name,
            "mode": cls.mode,
            "description": cls.description,
            "source": cls.source,
            "knobs": [
                {"name": k.name, "default": k.default, "allowed": k.allowed(), "doc": k.doc}
                for k in cls.knobs
            ],
        }
        for cls in MAPPINGS.values()
    ]
