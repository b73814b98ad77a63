"""The storage precisions of the simulated wafer, as one type parsed once at the boundary.

A :class:`Precision` is a ``str`` enum (``Precision.FP16 == "fp16"``, it hashes, prints,
formats and serialises to JSON as its name), so code that receives a parsed value can still
pass it where a name is expected. Each member carries what the machine needs to know about it:

* :attr:`~Precision.bytes_per_element`: the stored size, 4 (fp32) or 2 (fp16, bf16);
* :attr:`~Precision.significand_bits` and :attr:`~Precision.unit_roundoff`: ``t`` with the
  implicit bit, ``u = 2**-t`` under round-to-nearest (Higham, *Accuracy and Stability of
  Numerical Algorithms*, 2nd ed., SIAM 2002, §2.1): fp32 t=24, fp16 t=11, bf16 t=8;
* :attr:`~Precision.max_exponent`, :attr:`~Precision.max_finite` and
  :attr:`~Precision.overflow_threshold`: ``emax`` (15 for fp16, 127 for bf16 and fp32), the
  largest finite value ``(2 - 2**(1-t)) 2**emax`` and the smallest magnitude that rounds to
  infinity under round-to-nearest-even, ``(2 - 2**-t) 2**emax`` (IEEE 754-2019 §3.3, §4.3.1;
  bfloat16 is binary32's exponent with a 8-bit significand);
* :attr:`~Precision.accumulation`: the precision products are accumulated in: fp32 for every
  storage format (the simulator's model: 16-bit formats are storage, arithmetic is fp32);
* :attr:`~Precision.fmac_field` / :attr:`~Precision.fmac_energy_field`: the names of the
  :class:`wse_sim.arch.PEConfig` FMAC-rate field and the :class:`wse_sim.arch.EnergyConfig`
  per-FMAC energy field at this precision.

:meth:`Precision.parse` is the one place a name becomes a ``Precision``; it raises the
project's :class:`~wse_sim.errors.ConfigError` with one line naming the value and what is
allowed.
"""

from __future__ import annotations

from enum import Enum

from wse_sim.errors import ConfigError

__all__ = ["PRECISIONS", "Precision"]


class Precision(str, Enum):
    """A storage precision: ``fp32``, ``fp16`` or ``bf16`` (the value is the name)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    # behave as the name everywhere a str is expected (Python 3.10's enum.Enum has no StrEnum):
    # equal, hashed, printed and formatted as "fp16"; messages format values with !r, so a
    # parsed precision reads there as the name it came from
    __hash__ = str.__hash__
    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def parse(cls, value: object, field: str = "precision") -> Precision:
        """The precision named ``value`` (a ``Precision`` is returned as it is).

        Args:
            value: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a :class:`Precision`.
            field: the field or option named in the error message.

        Returns:
            The member.

        Raises:
            ConfigError: ``precision='fp8' is not supported; allowed: fp32, fp16, bf16``.
        """
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        raise ConfigError(
            f"{field}={value!r} is not supported; allowed: {', '.join(PRECISIONS)}"
        )

    @property
    def bytes_per_element(self) -> int:
        """Bytes of one stored element: 4 for fp32, 2 for fp16 and bf16."""
        return 4 if self is Precision.FP32 else 2

    @property
    def significand_bits(self) -> int:
        """Significand bits ``t`` with the implicit bit: 24 (fp32), 11 (fp16), 8 (bf16)."""
        return {"fp32": 24, "fp16": 11, "bf16": 8}[self.value]

    @property
    def unit_roundoff(self) -> float:
        """Unit roundoff ``u = 2**-t`` (round-to-nearest; Higham 2002, §2.1), dimensionless."""
        return 2.0 ** -self.significand_bits

    @property
    def max_exponent(self) -> int:
        """``emax`` of the format: 15 (fp16), 127 (bf16 and fp32)."""
        return 15 if self is Precision.FP16 else 127

    @property
    def max_finite(self) -> float:
        """Largest finite value ``(2 - 2**(1-t)) 2**emax``: 65504 (fp16), about 3.39e38
        (bf16), about 3.40e38 (fp32)."""
        return (2.0 - 2.0 ** (1 - self.significand_bits)) * 2.0**self.max_exponent

    @property
    def overflow_threshold(self) -> float:
        """Smallest magnitude that rounds to +-inf under round-to-nearest-even: halfway
        between :attr:`max_finite` and ``2**(emax+1)``, where the tie goes to infinity (the
        largest significand is odd): ``(2 - 2**-t) 2**emax``, 65520 for fp16."""
        return (2.0 - 2.0 ** -self.significand_bits) * 2.0**self.max_exponent

    @property
    def accumulation(self) -> Precision:
        """The precision of accumulation: fp32 for every storage format (the model)."""
        return Precision.FP32

    @property
    def fmac_field(self) -> str:
        """Name of the ``PEConfig`` field holding the FMACs per cycle at this precision."""
        return f"fmac_{self.value}_per_cycle"

    @property
    def fmac_energy_field(self) -> str:
        """Name of the ``EnergyConfig`` field holding one FMAC lane's energy (pJ)."""
        return f"fmac_{self.value}_pj"


#: the names of every precision, in :class:`Precision` order (argparse ``choices``)
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
