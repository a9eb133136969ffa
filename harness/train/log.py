"""The lines a trial prints: one per epoch (`format_epoch`) and one on noise detection after the last."""

from __future__ import annotations

from harness.contract import (
    GPU_PEAK_MEM_MB,
    PERF_IMG_PER_S,
    TEST_ACC,
    TEST_ACC_ENSEMBLE,
    TEST_ECE,
    TIME_EPOCH_S,
    TRAIN_ACC_CLEAN,
    TRAIN_ACC_NOISY,
    TRAIN_COLLAPSED,
    TRAIN_DETECT_AUROC,
    TRAIN_DETECT_AUROC_CONSENSUS,
    TRAIN_DETECT_PRECISION,
    TRAIN_KEPT,
    TRAIN_KEPT_PRECISION,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
    VAL_ACC_NOISY,
)


def format_detection(m: dict[str, float]) -> str:
    """One line on noise detection (`detect_noise`'s metrics)."""
    line = (
        f"noise detection: AUROC {m[TRAIN_DETECT_AUROC]:.3f} (kept head's loss), precision = recall "
        f"{m[TRAIN_DETECT_PRECISION]:.3f} at the realized rate"
    )
    if TRAIN_DETECT_AUROC_CONSENSUS in m:
        line += f"; heads' consensus: AUROC {m[TRAIN_DETECT_AUROC_CONSENSUS]:.3f}"
    return line


def format_epoch(epoch: int, epochs: int, m: dict[str, float]) -> str:
    mem = f"  mem {m[GPU_PEAK_MEM_MB]:.0f} MB" if GPU_PEAK_MEM_MB in m else ""
    mem += "  COLLAPSED" if m.get(TRAIN_COLLAPSED) else ""
    val = f"  val noisy {m[VAL_ACC_NOISY]:.4f}" if VAL_ACC_NOISY in m else ""
    memorized = f"{m[TRAIN_MEMORIZED]:.3f}" if TRAIN_MEMORIZED in m else "n/a"  # no flipped labels
    # a method that selects samples: the share kept, and the share of those with their true label
    kept = (
        f", kept {m[TRAIN_KEPT]:.3f} at precision {m[TRAIN_KEPT_PRECISION]:.3f}"
        if TRAIN_KEPT_PRECISION in m
        else ""
    )
    line = (
        f"epoch {epoch:>3}/{epochs}  loss {m[TRAIN_LOSS]:.4f}  train {m[TRAIN_ACC_NOISY]:.3f} "
        f"(clean {m[TRAIN_ACC_CLEAN]:.3f}, memorized {memorized}{kept})  "
        f"test {m[TEST_ACC]:.4f} (ens {m[TEST_ACC_ENSEMBLE]:.4f}, ece {m[TEST_ECE]:.3f}){val}  "
        f"{m[TIME_EPOCH_S]:.1f}s  {m[PERF_IMG_PER_S]:.0f} img/s{mem}"
    )
    return line + ("\n" + format_detection(m) if TRAIN_DETECT_AUROC in m else "")
