"""Model FLOPs per token (PaLM/Chinchilla accounting), achieved FLOP/s, and the peak they are judged against.

Accounting (PaLM, Chowdhery et al. 2022, appendix B), per token of a sequence of length ``T``::

    train   = 6 * N + 12 * L * H * Q * T
    forward = 2 * N +  4 * L * H * Q * T        (one third of train: backward costs twice the forward)

with ``L`` layers, ``H`` heads of width ``Q`` (so ``H * Q = d_model``) and ``N`` the parameters that take
part in a matrix multiply per token: ``L * (4 * d_model**2 + 2 * d_model * d_ff)`` for the attention and MLP
projections, plus ``d_model * vocab_size`` for the LM head (a real matmul per token even when tied to the
embedding). Embedding lookups, biases and norms are left out, as is the classifier head (one small matmul
per sequence). The attention term counts the full ``T x T`` score and value products, as PaLM does.

The peak is either a datasheet figure for a known GPU (dense, i.e. without structured sparsity) or the rate a
square matmul probe achieved inside a worker (:func:`matmul_flop_rate` turns its timing into FLOP/s).
"""

from __future__ import annotations

from llmdual.core.config import Config

# Dense peak throughput in TFLOP/s by precision, from NVIDIA's datasheets (their sparse figures halved).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H200 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}

# Substrings (all must occur, case-insensitively) in an ``nvidia-smi`` name -> datasheet row; first match wins,
# so the specific variants come before the plain names ("NVIDIA H100 80GB HBM3" is the SXM part).
GPU_NAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("h100", "pcie"), "H100 PCIe"),
    (("h100", "nvl"), "H100 NVL"),
    (("h200", "nvl"), "H200 NVL"),
    (("h200",), "H200 SXM"),
    (("h100",), "H100 SXM"),
    (("a100",), "A100"),
)

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_DTYPE_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def matmul_params(config: Config, task: str = "lm") -> int:
    """``N`` above: parameters used in a matmul per token (the LM head only for ``task="lm"``)."""
    if task not in ("lm", "classifier"):
        raise ValueError(f"task must be 'lm' or 'classifier', got {task!r}")
    C = config.d_model  # q, k, v (fewer k and v heads with GQA), the output, and the MLP (SwiGLU: gate, up, down)
    body = config.n_layers * (C * config.qkv_width + C * C + C * config.fc_width + config.d_ff * C)
    return body + (config.d_model * config.vocab_size if task == "lm" else 0)


def _check_seq_len(config: Config, seq_len: int) -> None:
    if not 0 < seq_len <= config.max_seq_len:
        raise ValueError(f"seq_len must be in [1, {config.max_seq_len}], got {seq_len}")


def train_flops_per_token(config: Config, seq_len: int, task: str = "lm") -> float:
    """Training FLOPs per token: ``6 N + 12 L H Q T`` (forward and backward)."""
    _check_seq_len(config, seq_len)
    return 6.0 * matmul_params(config, task) + 12.0 * config.n_layers * config.d_model * seq_len


def forward_flops_per_token(config: Config, seq_len: int, task: str = "lm") -> float:
    """Forward-only FLOPs per token: ``2 N + 4 L H Q T``, one third of the training figure."""
    return train_flops_per_token(config, seq_len, task) / 3.0


def flops_per_unit(config: Config, workload: str, seq_len: int) -> float | None:
    """FLOPs behind one unit of a workload's throughput (a token, or a sequence for ``classify``).

    ``None`` for ``generate``, whose cost depends on cache use and is not judged against a peak.
    """
    if workload == "train":
        return train_flops_per_token(config, seq_len)
    if workload == "infer":
        return forward_flops_per_token(config, seq_len)
    if workload == "classify":
        return forward_flops_per_token(config, seq_len, task="classifier") * seq_len
    return None


def matmul_flop_rate(n: int, seconds: float, count: int = 1) -> float:
    """FLOP/s of ``count`` products of two ``n x n`` matrices that took ``seconds`` (``2 n^3`` each)."""
    if n <= 0 or count <= 0 or seconds <= 0:
        raise ValueError(f"need positive n, count and seconds, got n={n}, count={count}, seconds={seconds}")
    return 2.0 * n**3 * count / seconds


def utilisation(achieved_flops: float, peak_flops: float) -> float:
    """Achieved over peak FLOP/s (model FLOPs utilisation, MFU), a fraction in [0, 1] for sane inputs."""
    if peak_flops <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops}")
    return achieved_flops / peak_flops


def precision_of(dtype: str, tf32: bool = False) -> str:
    """Datasheet precision for a compute dtype (``float32`` counts as ``tf32`` when TF32 is enabled)."""
    if dtype not in _DTYPE_PRECISION:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPE_PRECISION)}")
    precision = _DTYPE_PRECISION[dtype]
    return "tf32" if precision == "fp32" and tf32 else precision


def gpu_model(name: str) -> str | None:
    """The datasheet row for a GPU name as ``nvidia-smi`` prints it, or ``None`` if unknown."""
    lowered = name.lower()
    for parts, model in GPU_NAMES:
        if all(part in lowered for part in parts):
            return model
    return None


def datasheet_peak(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a known GPU at ``precision``, or ``None`` for an unknown GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    model = gpu_model(name)
    return None if model is None else PEAK_TFLOPS[model][precision] * 1e12
