"""`rehearse`'s verdict: one screen saying what would run where and, after a rehearsal, what it did
and what it costs, and the list of what this rehearsal could not try."""

from __future__ import annotations

from typing import Any

from resnet_repro.planning.rehearse_checks import Shape


def _megabytes(mb: float) -> str:
    if mb >= 1024:
        return f"{mb / 1024:,.1f} GB"
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2f} MB"


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:,.1f} h"


def verdict(shape: Shape, record: dict[str, Any] | None = None) -> str:
    """One screen: what would run where, and (after a rehearsal) what it did and what it costs."""
    s = shape
    spe = f"{s.steps_per_epoch:,}" if s.steps_per_epoch is not None else "unknown"
    data = record["data"] if record is not None else s.data_source
    lines = [
        "rehearsal verdict: the real run would start" + (" and train" if record else "") + f" (data: {data})",
        f"  processes        {s.processes}: {s.launch}, on {s.device}",
        f"  batch            {s.per_process_batch} per process, {s.global_batch} global "
        f"(peak LR {s.peak_lr:g})",
        f"  steps per epoch  {spe} x {s.epochs} epochs ({s.train_images_source})",
        f"  precision        {s.precision}",
        f"  change points    {', '.join(s.change_points)}",
        f"  activations      {_megabytes(s.activation_mb_per_image)} per image kept for the backward pass: "
        f"{_megabytes(s.activation_mb_per_image * s.per_process_batch)} per process at "
        f"{s.per_process_batch} (largest crop, float32"
        + (f"; {s.precision} autocast stores less, not counted" if s.precision != "fp32" else "")
        + "; counted on the meta device)",
    ]
    if record is not None:
        mem = ", ".join(f"rank {i}: {m:,.0f} MB" for i, m in enumerate(record["peak_memory_mb"]))
        lines.append(f"  peak memory      {mem or 'not recorded'}")
        part = record["images_per_step"]
        if part is not None:
            lines.append(
                f"  trained images   the first {part} of each process's {s.per_process_batch} per step "
                "(the loader read all of them; --images-per-step=all trains the whole batch)"
            )
        lines.append(f"  data             {record['data']}")
        spe = record["steps_per_epoch"]
        steps = "; ".join(
            f"{w['start'] + 1}" + (f"-{w['end']}" if w["end"] > w["start"] + 1 else "") + f" ({w['why']})"
            for w in record["trained"]
        )
        lines.append(f"  trained steps    {steps} of {spe} per epoch of this data")
        how = (
            "a second launch of the processes"
            if record["launches"] == 2
            else "the same processes, every part rebuilt"
        )
        lines.append(f"  resumed          stopped before the last window with last.pt; {how} resumed it")
        tops = ", ".join(f"{name} top-1 {top1:.4f}" for name, top1 in record["final_top1"].items())
        lines.append(f"  final eval       {tops} (final.json)")
        lines.append(f"  run directory    {record['run_dir']}")
    p = record["plan"] if record is not None else s.plan
    if p is None and record is not None and record.get("plan_note"):
        lines.append(f"  plan             {record['plan_note']}")
    if p is not None:
        lines.append(
            f"  plan             {_hours(p['train_hours'])} of training at {p['img_per_s']:,.1f} img/s "
            f"over {p['world_size']} processes ({p['img_per_s_source']})"
        )
    dev = ", ".join(s.deviations) if s.deviations else "none"
    lines.append(f"  deviations       from reference={s.reference}: {dev}")
    if s.stats is not None:
        lines.append(f"  statistics       {s.stats}")
    if s.scanned is not None:
        lines.append(f"  scanned          {s.scanned}")
    if s.run_dir is not None:
        lines.append(f"  run directory    {s.run_dir}")
    if s.memory is not None:
        lines.append(f"  GPU memory       {s.memory}")
    for said in s.substituted:
        lines.append(f"  substituted      {said} (no GPU here; the real run keeps its setting)")
    lines.extend(f"  warning          {said} (train warns of it too)" for said in s.warnings)
    lines.append("not checked here:")
    lines.extend(f"  - {line}" for line in not_checked(s, record))
    return "\n".join(lines)


def not_checked(shape: Shape, record: dict[str, Any] | None) -> list[str]:
    """What this rehearsal could not try, one line each, so that its "ok" claims no more."""
    on_gpu = shape.device.startswith("cuda")
    lines = []
    if not on_gpu:
        lines.append("GPU decoding (DALI's \"mixed\", nvJPEG) and the GPU's speed: all ran on the CPU")
    if shape.processes > 1 and record is None:
        lines.append("the process group (NCCL or gloo): not started (--check-only)")
    elif shape.processes > 1 and not on_gpu:
        lines.append("NCCL: the processes met over gloo on the CPU")
    if record is None:
        lines.append("any step, checkpoint or evaluation: --check-only trains nothing (drop it to rehearse)")
    if shape.stats is None:
        lines.append("the data: not read (data.root unset or --stand-in); counts are estimates")
    elif not shape.scanned:
        lines.append(
            f"every image: only {'the listing and a sample were' if record else 'the listing was'} read; "
            "`resnet-repro verify-data data.root=...` "
            "(or rehearse --scan) checks every file's header"
        )
    lines.append("several nodes: one host's processes only")
    lines.append("throughput at the full batch: plan.img_per_s_per_gpu=N or a run on the GPU measures it")
    return lines
