"""torch.compile for training: one static graph per input shape, and how many were compiled.

`dynamic=False` is chosen deliberately. With torch's default (`dynamic=None`) the second input
shape a model sees (progressive resizing's second size) makes dynamo recompile with symbolic
shapes, and every later size then runs that dynamic graph (kernels not specialised to the size,
different from what `bench model` measured). Static shapes compile once per size instead: the
training loader's batches have one shape per epoch (training drops the partial last batch), the
size changes only at epoch boundaries, and the compile happens in the first step of each size's
first epoch (that epoch's img/s includes it). Evaluation runs the uncompiled module, so it adds no
graph. The count of graphs compiled since the run was built is logged with every epoch
(`compiled_graphs` in metrics.jsonl).
"""

from __future__ import annotations

import torch.nn as nn

# torch.compile's backend; tests use "eager" (dynamo's graph capture and guards, no code generation)
BACKEND = "inductor"
SPARE_RECOMPILES = 2  # margin over the planned shapes before dynamo gives up compiling a frame


def compile_for_shapes(model: nn.Module, shapes: int) -> nn.Module:
    """`model` compiled with static shapes, allowed at least `shapes` compiles of its frame (past
    torch's recompile_limit, 8, dynamo would silently run the rest of the run uncompiled).

    Dynamo starts afresh first: its cache of compiled frames is the process's, and a local sweep
    runs its points in one process. Otherwise models of another shape (a sweep over the model, the
    classes or the precision) would add their compiles of the same forward code up to the limit,
    and a point of the same shape would reuse an earlier point's graphs (its first epoch's img/s
    then without the compile that the others include): each point compiles as if alone."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # reset() keeps dynamo's counts: graphs_compiled() is then this run's
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, shapes + SPARE_RECOMPILES)
    return torch.compile(model, dynamic=False, backend=BACKEND)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled since the last `compile_for_shapes` (its own counter, as
    TORCH_LOGS=recompiles would list them)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
