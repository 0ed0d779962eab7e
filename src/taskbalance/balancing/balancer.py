"""The Balancer: all the gradient work of one multi-task training step.

Cost of a step (see ``docs/architecture.md``):

* loss methods: one backward of ``method.combine(L)`` (GradNorm adds T short passes through the
  heads and the last shared layer to measure ``‖∇_W L_t‖``);
* gradient methods in ``"param"`` mode: one backward per task. Before task t's backward the
  shared parameters' ``.grad`` are set to views of row t of a preallocated ``J`` (``[T, P]``),
  so autograd accumulates the per-task gradient straight into ``J`` on the model's device (no
  copy, no concatenation), while task-specific parameters accumulate their own task's gradient;
* gradient methods in ``"rep"`` mode: ``J`` holds the gradients of the task losses w.r.t. the
  shared features ``z`` (T passes through the heads only; ONE pass when each head read its own
  view of ``z``), each copied into its row of a ``[T, |z|]`` matrix reused from step to step
  as autograd produces it (no fresh pages every step; the heads' graph is freed as the pass
  goes), then a single backward from ``z`` with the aggregated direction, so the shared part
  is traversed once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from taskbalance.validation import check_finite_losses

from .base import GradientMethod, LossMethod, Method, check_choice, raise_nonfinite_gradient
from .distributed import resolve_group
from .distributed_step import distributed_backward
from .heads import (
    HeadPass,
    feature_list,
    head_pass,
    leaves_above,
    task_inputs,
    tied_leaves,
    view_pass,
)
from .independent_step import check_independent_setup, independent_backward
from .rows import RowBuffer
from .solvers import combine, first_nonfinite_row, first_nonfinite_row_of, gramian
from .step_info import Features, LossInput, StepInfo
from .streaming import (
    batched_task_gradients,
    gramian_by_parameter,
    loss_cotangents,
    streaming_supported,
)

__all__ = ["Balancer", "StepInfo"]


class Balancer:
    """Runs the backward pass of a multi-task step with a balancing method.

    Args:
        method: a method from :func:`taskbalance.create`.
        shared_parameters: the parameters shared by all tasks (e.g.
            ``model.shared_parameters()``); every other parameter reached by a task's loss is
            treated as that task's own and receives that task's gradient.
        mode: ``"param"`` balances gradients of the shared parameters; ``"rep"`` balances
            gradients of the shared features passed to :meth:`backward` (cheaper; with MGDA
            this is MGDA-UB, Sener & Koltun 2018). Loss methods ignore the mode.
        last_shared_parameters: the "last shared layer" W for GradNorm, among
            ``shared_parameters``, each listed once; by default the last shared parameter with
            at least two dimensions (a weight matrix or kernel).
        task_names: order of the tasks; by default the order of the first loss dict.
        track_gradients: compute per-task gradient norms and cosines when per-task gradients
            exist (one ``T x T`` Gramian, cheap).
        check_finite: raise a clear error naming the task when a loss is NaN or infinite,
            or of a sign the method cannot take the logarithm of (``method.loss_sign``); costs
            one device synchronisation per step. ``False`` skips both checks.
        nonfinite: what to do when a task's gradient holds NaN or Inf (checked on the step's
            Gramian; for methods that need J itself without ``track_gradients``, only with
            ``check_finite``): ``"raise"`` (default) an error naming the task; ``"skip"`` warn,
            count the step in ``skipped_steps``, write no shared gradient and return a
            :class:`StepInfo` with ``skipped=True`` - the caller must then skip the optimizer
            step and zero the gradients (task heads may already hold this step's gradients).
        memory: ``"jacobian"`` (default) holds the per-task gradients J (``T x P``) for one
            step. ``"gramian"`` never holds J: one batched backward streams each shared
            parameter's ``T`` gradients into the Gramian and frees them, the weights are solved
            from the Gramian, then one more backward of ``Σ_t w_t L_t`` writes the update (peak
            extra memory ``O(T² + T x`` the largest parameter)). Param mode, and methods whose
            update is ``Σ_t w_t g_t`` (``method.uses_gramian``) only.
        task_backward: how param mode computes the T per-task gradients: ``"loop"`` (default;
            one backward per task, from that task's own loss) or ``"batched"`` (one batched
            backward, ``is_grads_batched``; with the features, each head once then T-wide
            through the shared part, as TorchJD does; without, every task's cotangent goes
            through every head). The loop is the default because on the CPU the batched
            backward is no faster (within ~5% either way, ``benchmarks/bench_peers.py
            --task-backward both``) and its T-times larger temporaries are page-faulted back
            in when glibc's malloc returns them to the kernel (up to 1.3x a step). Also how
            GradNorm, given the features, computes the T gradients of the last shared layer
            from them.
        process_group: ``"auto"`` (default): when ``torch.distributed`` is initialised with more
            than one rank, every :meth:`backward` takes the step of the union of all ranks'
            batches (see ``docs/distributed.md``): the method sees the union's per-task
            gradients, losses and statistics, and ``.grad`` of the shared parameters and task
            heads ends up holding the union-batch gradients on every rank. Under a
            ``DistributedDataParallel`` wrapper run the forward and :meth:`backward` inside
            ``model.no_sync()`` (the Balancer does the reduction). ``None``: one process (no
            collective). A ``ProcessGroup``: that group.
        parameters: distributed only: every parameter whose gradient the step writes (e.g.
            ``model.parameters()``), summed over ranks in a fixed order. By default the shared
            parameters plus the leaves the losses reach on each rank, which needs every rank to
            reach the same task heads (an error names the fix when they do not).
    """

    def __init__(
        self,
        method: Method,
        shared_parameters: Iterable[nn.Parameter],
        mode: str = "param",
        *,
        last_shared_parameters: Iterable[nn.Parameter] | None = None,
        task_names: Sequence[str] | None = None,
        track_gradients: bool = True,
        check_finite: bool = True,
        nonfinite: str = "raise",
        memory: str = "jacobian",
        task_backward: str = "loop",
        process_group: object = "auto",
        parameters: Iterable[nn.Parameter] | None = None,
    ) -> None:
        if not isinstance(method, Method):
            raise TypeError(
                f"method must be a balancing method from taskbalance.create(...), got "
                f"{type(method).__name__}"
            )
        self.method = method
        self.mode = check_choice("mode", mode, ("param", "rep"))
        if self.mode == "rep" and not getattr(method, "supports_rep_mode", True):
            raise ValueError(
                f"method {method.name!r} keeps statistics of each shared parameter's gradient "
                "across steps, which rep-mode features (other samples every batch) do not have; "
                "use mode='param'"
            )
        # Every shared parameter is kept; the ones that require grad are chosen at each step,
        # so a part frozen (or unfrozen) after construction is handled (see _select_shared).
        self._all_shared = list(shared_parameters)
        if not self._all_shared:
            raise ValueError(
                "shared_parameters is empty; pass the parameters all tasks share, e.g. "
                "model.shared_parameters()"
            )
        if len({id(p) for p in self._all_shared}) != len(self._all_shared):
            raise ValueError("shared_parameters lists the same parameter more than once")
        self._all_last = None if last_shared_parameters is None else list(last_shared_parameters)
        if self._all_last is not None and not self._all_last:
            raise ValueError("last_shared_parameters is empty")
        if self._all_last is not None:
            _check_last_shared(self._all_last, self._all_shared)
        self._active_key: tuple[int, ...] | None = None
        self._select_shared()
        self.task_names: tuple[str, ...] | None = None
        if task_names is not None:
            self._set_task_names(task_names)
        self._all_present: dict[torch.device, Tensor] = {}
        self.track_gradients = track_gradients
        self.check_finite = check_finite
        self.nonfinite = check_choice("nonfinite", nonfinite, ("raise", "skip"))
        self.memory = check_choice("memory", memory, ("jacobian", "gramian"))
        self.task_backward = check_choice("task_backward", task_backward, ("loop", "batched"))
        if task_backward == "batched" and not streaming_supported():
            raise ValueError(
                f"task_backward='batched' needs batching primitives this PyTorch "
                f"({torch.__version__}) does not have; use task_backward='loop'"
            )
        if memory == "gramian":
            self._check_gramian_memory()
        #: Steps skipped because a task gradient held NaN or Inf (``nonfinite="skip"``).
        self.skipped_steps = 0
        self._rows = RowBuffer()  # rep mode / the head pass: the feature gradients, reused
        self._dist = resolve_group(process_group)
        check_independent_setup(method, self.mode, memory, self._dist is not None)
        self.sync_parameters: list[nn.Parameter] | None = None
        if parameters is not None:
            seen: set[int] = set()
            self.sync_parameters = []
            for p in [*self.shared, *parameters]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    self.sync_parameters.append(p)

    @property
    def distributed(self) -> bool:
        """Whether steps are taken over the ranks of a process group."""
        return self._dist is not None

    def reduce_mean_losses(self, mean_losses: Tensor, counts: Tensor) -> Tensor:
        """Union means of per-rank means: ``Σ_r n_t^r m_t^r / Σ_r n_t^r`` (NaN where no rank has
        a sample of the task). For ``epoch_end`` statistics (DWA) and FAMO's ``update``; in one
        process it returns ``mean_losses`` (NaN where ``counts`` is 0)."""
        m = mean_losses.detach().to(torch.float64)
        n = torch.as_tensor(counts, dtype=torch.float64, device=m.device)
        buf = torch.cat([torch.where(n > 0, n * m, torch.zeros_like(m)), n])
        if self._dist is not None:
            self._dist.all_reduce(buf)
        T = len(m)
        total, N = buf[:T], buf[T:]
        out = torch.where(N > 0, total / torch.where(N > 0, N, 1.0), float("nan"))
        return out.to(mean_losses.dtype)

    def _select_shared(self) -> None:
        """``self.shared``: the shared parameters that require grad now (recomputed only when
        that set changed). With none, a step is a heads-only step (see :meth:`_heads_only`)."""
        key = tuple(p.requires_grad for p in self._all_shared)
        if key == self._active_key:
            return
        self._active_key = key
        self.shared = [p for p in self._all_shared if p.requires_grad]
        self._numels = [p.numel() for p in self.shared]
        self._num_shared = sum(self._numels)
        if self._all_last is None:
            matrices = [p for p in self.shared if p.dim() >= 2]
            self.last_shared = [matrices[-1]] if matrices else self.shared[-1:]
        else:
            self.last_shared = [p for p in self._all_last if p.requires_grad]
        needs_last = getattr(self.method, "needs_last_layer_grad_norms", False)
        if needs_last and self.shared and not self.last_shared:
            raise ValueError(
                "every parameter of last_shared_parameters is frozen while other shared "
                "parameters train; unfreeze the last shared layer or pass another one"
            )
        if needs_last and not self.shared:
            raise ValueError(
                f"method {self.method.name!r} needs gradients of the last shared layer, but every "
                "shared parameter is frozen; unfreeze the shared part or use another method"
            )

    def _heads_only(
        self,
        items: list[Tensor | None],
        stacked: Tensor,
        present: Tensor,
        all_present: bool,
        info: StepInfo,
    ) -> None:
        """A step with every shared parameter frozen: each task-specific parameter gets what a
        full step gives it. Loss methods backpropagate ``combine(L)``; gradient methods give
        each head its own task's gradient (the direction only matters on shared parameters)."""
        method = self.method
        if isinstance(method, LossMethod):
            total = method.combine_present(stacked, None if all_present else present)
            info.weights = self._full_weights(method.last_weights, present, all_present)
        else:
            total = torch.stack([x for x in items if x is not None]).sum()
            info.weights = present.to(stacked.dtype)
        if total.requires_grad:
            total.backward()

    def _check_gramian_memory(self) -> None:
        method = self.method
        if isinstance(method, GradientMethod) and not method.uses_gramian:
            raise ValueError(
                f"method {method.name!r} needs the per-task gradients themselves (J), so it "
                "cannot run with memory='gramian'; use memory='jacobian' (the default), or a "
                "method whose update is a weighted sum of the task gradients (e.g. mgda, "
                "upgrad, nash_mtl, cagrad, pcgrad)"
            )
        if self.mode == "rep":
            raise ValueError(
                "memory='gramian' is for param mode; rep mode already holds only the "
                "gradients w.r.t. the shared features (use memory='jacobian')"
            )
        if not streaming_supported():
            raise ValueError(
                f"memory='gramian' needs batching primitives this PyTorch ({torch.__version__}) "
                "does not have; use memory='jacobian'"
            )

    # ------------------------------------------------------------------ public API
    def parameters(self) -> Iterator[nn.Parameter]:
        """Learnable parameters of the method; give them to the optimizer."""
        return self.method.parameters()

    def backward(
        self,
        losses: LossInput,
        features: Features | None = None,
        *,
        counts: Mapping[str, float] | Sequence[float] | Tensor | None = None,
    ) -> StepInfo:
        """Compute and write the gradients of one step; returns what the step did.

        ``losses``: a dict task name -> scalar loss (``None`` for a task without labels in this
        batch), a sequence of scalars, or a tensor of shape ``[T]``. In rep mode, ``features`` are
        the shared features the task heads consumed (a tensor or several), or a mapping task name
        -> what that task's head consumed, a view of the shared features made for that head
        alone (``{t: z.view_as(z)}``, e.g. ``MultiTaskModel.head_inputs``): then one backward
        gives every task's feature gradient instead of one backward per task (same update, to
        float rounding; one process only). ``counts`` (distributed only): per task,
        the number of samples its local loss is the mean over (labelled samples); the union
        loss is the mean over all ranks' labelled samples. Default: 1 per task present (equal
        local batches). A rank may pass every loss as ``None`` (it contributes nothing).
        """
        parts = getattr(self.method, "independent_batches", 1)
        if parts > 1:
            raise ValueError(
                f"method {self.method.name!r} (sampling='independent') needs {parts} independent "
                f"sub-batches a step: call backward_independent([losses of each part]) (the "
                "Trainer does), or create the method with sampling='single'"
            )
        self._select_shared()
        if self._dist is not None:
            if not self.shared:
                raise ValueError(
                    "every shared parameter is frozen: a distributed step needs a trainable "
                    "shared part (unfreeze it, or train the heads with process_group=None)"
                )
            if isinstance(features, Mapping):
                raise ValueError(
                    "per-task features (a mapping of each head's input) are for one process; a "
                    "distributed step takes the shared features themselves (model.features)"
                )
            return distributed_backward(self, losses, features, counts)
        items, stacked, present, all_present = self._stack(losses)
        names = self.task_names
        assert names is not None
        method = self.method
        mask = None if all_present else present
        info = StepInfo(task_names=names, losses=stacked.detach(), present=present)
        if not self.shared:
            self._heads_only(items, stacked, present, all_present, info)
            return info

        if isinstance(method, LossMethod):
            # A weight tied between a head and the shared part: the plain path (same update)
            fast = features is not None and not self._tied(_present(items), features)
            if method.needs_last_layer_grad_norms and fast:
                assert features is not None
                self._grad_norm_step(method, items, stacked, mask, features, info)
            else:
                if method.needs_last_layer_grad_norms:
                    norms = self._last_layer_grad_norms(items, stacked)
                    method.observe_grad_norms(norms)
                    info.grad_norms = norms
                total = method.combine_present(stacked, mask)
                if total.requires_grad:
                    total.backward()
        elif isinstance(method, GradientMethod):
            self._gradient_step(method, items, stacked, present, all_present, features, info)
        else:  # pragma: no cover - Method subclasses are one of the two kinds
            raise TypeError(f"unsupported method kind {method.kind!r}")

        if not info.skipped:
            info.weights = self._full_weights(method.last_weights, present, all_present)
        return info

    def backward_independent(self, parts: Sequence[LossInput]) -> StepInfo:
        """The step of a method with ``independent_batches == 3`` (MoDo, SDMGrad with
        ``sampling="independent"``) from the losses of 3 disjoint parts of the batch (each a
        loss input as for :meth:`backward`, from its own forward pass; every part must label
        the same tasks): the weights from the cross-Gramian of parts 1 and 2, the shared
        parameters' update from part 3, every head the mean of its task's gradients over the
        parts. ``StepInfo.losses`` are the parts' mean; its norms and cosines are those of the
        whole batch's gradients. Param mode, one process (see
        :mod:`taskbalance.balancing.independent_step`)."""
        if getattr(self.method, "independent_batches", 1) == 1:
            raise ValueError(
                f"method {self.method.name!r} takes one batch a step: call backward(losses)"
            )
        return independent_backward(self, parts)

    def _gradient_step(
        self,
        method: GradientMethod,
        items: list[Tensor | None],
        stacked: Tensor,
        present: Tensor,
        all_present: bool,
        features: Features | None,
        info: StepInfo,
    ) -> None:
        names = info.task_names
        idx = [t for t, x in enumerate(items) if x is not None]
        own: list[Tensor] = [items[t] for t in idx]  # type: ignore[misc]
        seeds = self._loss_seeds(method, stacked, idx)
        J: Tensor | None = None
        G: Tensor | None = None
        write: Callable[[Tensor], None] | None = None
        if self.memory == "gramian":  # G streamed parameter by parameter; J never exists
            G = gramian_by_parameter(own, seeds, self.shared).cpu()
        elif self.mode == "param" and self.task_backward == "batched":
            J = self._batched_param_jacobian(own, seeds, idx, features)
            write = self._param_writer()
        elif self.mode == "param":
            J, write = self._param_jacobian(own, seeds), self._param_writer()
        else:
            J, write = self._rep_jacobian(own, seeds, idx, features)
        if J is not None and (method.uses_gramian or self.track_gradients):
            G = gramian(J, device="cpu")  # once per step: for the method and the statistics
        dtype = self.shared[0].dtype if J is None else J.dtype
        device = self.shared[0].device if J is None else J.device

        bad = self._nonfinite_row(J, G)
        if bad is not None:
            self._refuse_nonfinite(names[idx[bad]], info)
        else:
            losses_arg = stacked.detach()[present].to(dtype) if method.needs_losses else None
            if method.uses_gramian:
                assert G is not None
                host_mask = None if all_present else torch.tensor([x is not None for x in items])
                w = method.solve(G, losses_arg, host_mask, dtype=dtype, device=device)
                if J is None:
                    self._write_weighted_backward(own, seeds, w)
                else:
                    assert write is not None
                    write(combine(w, J))
            else:
                assert isinstance(J, Tensor) and write is not None
                write(method.aggregate_present(J, losses_arg, None if all_present else present))
        if G is not None and self.track_gradients:
            info.grad_norms, info.cosines = self._gradient_stats(
                G, dtype, device, present, all_present
            )

    # ------------------------------------------------------------------ helpers
    def _set_task_names(self, names: Sequence[str]) -> None:
        names = tuple(names)
        if len(names) != self.method.num_tasks:
            raise ValueError(
                f"the method was created for {self.method.num_tasks} tasks but got "
                f"{len(names)} task names: {list(names)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {list(names)}")
        self.task_names = names

    def _stack(
        self, losses: LossInput, allow_empty: bool = False
    ) -> tuple[list[Tensor | None], Tensor, Tensor, bool]:
        T = self.method.num_tasks
        if isinstance(losses, Mapping):
            if self.task_names is None:
                self._set_task_names(list(losses))
            assert self.task_names is not None
            missing = [n for n in self.task_names if n not in losses]
            extra = [n for n in losses if n not in self.task_names]
            if missing or extra:
                raise ValueError(
                    f"losses must have one entry per task {list(self.task_names)}; "
                    f"missing {missing}, unexpected {extra} (use None for a task without labels)"
                )
            items = [losses[n] for n in self.task_names]
        elif isinstance(losses, Tensor):
            if losses.dim() != 1:
                raise ValueError(
                    f"a loss tensor must have shape [{T}], got shape {list(losses.shape)}"
                )
            items = list(losses.unbind())
        else:
            items = list(losses)
        if self.task_names is None:
            self._set_task_names([f"task{i}" for i in range(len(items))])
        names = self.task_names
        assert names is not None
        if len(items) != T:
            raise ValueError(f"expected {T} task losses, got {len(items)}")

        ref = next((x for x in items if x is not None), None)
        if ref is None and allow_empty:
            first = self.shared[0]
            zeros = torch.zeros(T, dtype=first.dtype, device=first.device)
            return items, zeros, torch.zeros(T, dtype=torch.bool, device=first.device), False
        if ref is None:
            raise ValueError(
                "no task has a loss in this batch (every loss is None); skip the batch instead"
            )
        for n, x in zip(names, items):
            if x is None:
                continue
            if not isinstance(x, Tensor):
                raise TypeError(f"the loss of task {n!r} must be a tensor, got {type(x).__name__}")
            if x.dim() != 0:
                raise ValueError(
                    f"the loss of task {n!r} must be a scalar, got shape {list(x.shape)}; "
                    "reduce it (e.g. .mean()) before balancing"
                )
            if not x.is_floating_point():
                raise TypeError(f"the loss of task {n!r} must be floating point, got {x.dtype}")
        flags = [x is not None for x in items]
        all_present = all(flags)
        if all_present:
            stacked = torch.stack(items)  # type: ignore[arg-type]
            # The usual case: reuse one all-True mask per device (no host-to-device copy a step).
            present = self._all_present.get(stacked.device)
            if present is None:
                present = torch.ones(T, dtype=torch.bool, device=stacked.device)
                self._all_present[stacked.device] = present
        else:
            zero = ref.new_zeros(())
            stacked = torch.stack([zero if x is None else x for x in items])
            present = torch.tensor(flags, device=stacked.device)
        if self.check_finite:  # with the method's sign rule: one host sync for both
            method = self.method
            mask = None if all_present else present
            sign = method.loss_sign
            check_finite_losses(stacked, names, sign=sign, present=mask, method=method.name)
        for n, x in zip(names, items):
            if x is not None and not x.requires_grad:
                raise ValueError(
                    f"the loss of task {n!r} does not require grad, so nothing can be "
                    "backpropagated from it: compute it outside torch.no_grad() from the model's "
                    "outputs (not from detached tensors or .item() values), or pass None for a "
                    "task without labels in this batch"
                )
        return items, stacked, present, all_present

    def _loss_seeds(
        self, method: GradientMethod, stacked: Tensor, idx: list[int]
    ) -> list[Tensor] | None:
        """``∂L̃_t/∂L_t`` per task present when the method transforms its losses, else None.

        Each task's backward starts from its own loss tensor with this seed (the chain rule
        through the element-wise transform), so no backward goes through another task's head.
        The transform's own parameters (e.g. IMTL's loss scales) receive ``∂(Σ_t L̃_t)/∂s`` here.
        """
        if type(method).transform_losses is Method.transform_losses:
            return None
        raw = stacked.detach().requires_grad_(True)
        transformed = method.transform_losses(raw)
        transformed[idx].sum().backward()
        assert raw.grad is not None
        return list(raw.grad[idx].unbind())

    def _batched_param_jacobian(
        self,
        own: list[Tensor],
        seeds: list[Tensor] | None,
        idx: list[int],
        features: Features | None,
    ) -> Tensor:
        """J from one batched backward (``is_grads_batched``), written into J block by block.

        With the features: each head once (head pass), then one T-wide backward from the
        features through the shared part. Without: T-wide from the losses (every head sees
        every task's cotangent, mostly zeros).
        """
        first = self.shared[0]
        J = torch.zeros(len(own), self._num_shared, dtype=first.dtype, device=first.device)
        offsets = [0]
        for n in self._numels:
            offsets.append(offsets[-1] + n)

        def store(i: int, block: Tensor) -> None:
            J[:, offsets[i] : offsets[i + 1]] = block

        if features is None:
            batched_task_gradients(own, loss_cotangents(own, seeds), self.shared, store)
        else:
            self._refuse_tied(own, features)
            heads = self._head_pass(own, seeds, idx, features)
            heads.write_heads()
            batched_task_gradients(heads.features, heads.feature_cotangents(), self.shared, store)
        return J

    def _param_jacobian(
        self, own: list[Tensor], seeds: list[Tensor] | None, out: Tensor | None = None
    ) -> Tensor:
        """J ``[n, P]`` (written into ``out``, zeros of that shape, when given)."""
        shared = self.shared
        first = shared[0]
        J = out
        if J is None:
            J = torch.zeros(len(own), self._num_shared, dtype=first.dtype, device=first.device)
        saved = [p.grad for p in shared]
        try:
            for row, loss in enumerate(own):
                views = J[row].split(self._numels)
                for p, v in zip(shared, views):
                    p.grad = v.view_as(p)
                # Autograd adds task t's gradient in place into the views of J[row]; starting
                # from task t's own loss, the backward runs through task t's head only.
                seed = None if seeds is None else seeds[row]
                loss.backward(seed, retain_graph=row < len(own) - 1)
        finally:
            for p, g in zip(shared, saved):
                p.grad = g
        return J

    def _param_writer(self) -> Callable[[Tensor], None]:
        shared = self.shared

        def write(d: Tensor) -> None:
            for p, g in zip(shared, d.split(self._numels)):
                g = g.view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g  # a view of d, which nothing else holds: no copy
                else:
                    p.grad.add_(g)

        return write

    def _head_pass(
        self,
        own: list[Tensor],
        seeds: list[Tensor] | None,
        idx: list[int],
        features: Features | None,
        split_heads: bool = False,
    ) -> HeadPass:
        """Each present task's feature gradient and head gradients, each head traversed once.

        Per-task features (a mapping of each head's own view of the shared features): one
        backward for all tasks. Shared features: one backward per task, from its own loss.
        ``heads.features`` are then where a direction enters the shared part.
        """
        names = self.task_names
        assert names is not None
        present = [names[t] for t in idx]
        if not isinstance(features, Mapping):
            feats = feature_list(features)
            return head_pass(own, seeds, feats, present, self._feature_rows(len(own), feats))
        inputs = task_inputs(features, names)
        handles, mine = inputs[0], [inputs[t] for t in idx]
        J = self._feature_rows(len(own), handles)
        heads = view_pass(own, seeds, mine, handles, present, J, split_heads)
        if heads is None:  # a head parameter reached by two tasks: one backward per task
            heads = head_pass(own, seeds, handles, present, J, inputs=mine)
        return heads

    def _tied(self, own: list[Tensor], features: Features) -> list[Tensor]:
        """The leaves tied between a head and the shared part (:func:`~.heads.tied_leaves`)."""
        if not isinstance(features, Mapping):
            feats = feature_list(features)
            return tied_leaves(own, feats, feats)
        assert self.task_names is not None
        inputs = task_inputs(features, self.task_names)
        return tied_leaves(own, [x for xs in inputs for x in xs], inputs[0])

    def _refuse_tied(self, own: list[Tensor], features: Features | None) -> None:
        """A step through the features refused when a head reads a weight of the shared part."""
        tied = [] if features is None else self._tied(own, features)
        if tied:
            raise ValueError(
                f"a parameter of shape {list(tied[0].shape)} is read by a task head and also "
                "lies below the shared features (a weight tied between a head and the shared "
                "part): a step through the features would count its gradient through them "
                "twice; untie it, or use mode='param' without features"
            )

    def _feature_rows(self, n: int, feats: list[Tensor]) -> Tensor:
        """The ``[n, |z|]`` matrix this step's feature gradients are written into (reused)."""
        F = sum(f.numel() for f in feats)
        return self._rows.matrix(n, F, feats[0].dtype, feats[0].device)

    def _rep_jacobian(
        self,
        own: list[Tensor],
        seeds: list[Tensor] | None,
        idx: list[int],
        features: Features | None,
    ) -> tuple[Tensor, Callable[[Tensor], None]]:
        self._refuse_tied(own, features)
        heads = self._head_pass(own, seeds, idx, features)
        feats = heads.features
        numels = heads.numels

        def write(d: Tensor) -> None:
            # The heads' gradients come from the head pass (each head traversed once); the
            # shared part is traversed once, from the aggregated direction at the features.
            heads.write_heads()
            parts = [part.view_as(f).to(f.dtype) for part, f in zip(d.split(numels), feats)]
            torch.autograd.backward(feats, grad_tensors=parts)

        return heads.rows, write

    def _grad_norm_step(
        self,
        method: LossMethod,
        items: list[Tensor | None],
        stacked: Tensor,
        mask: Tensor | None,
        features: Features,
        info: StepInfo,
    ) -> None:
        """GradNorm's step with the features: every head and the shared part traversed once.

        The head pass gives each task's feature gradient and head gradients; backwards from
        the features to the last shared layer W (one per task, or one batched:
        ``task_backward``) give the T gradients ``g_t = ∇_W L_t`` and their norms; then the
        heads receive ``c_t ·`` their gradients (``c = ∂combine(L)/∂L``), W receives
        ``Σ_t c_t g_t`` (by linearity its gradient of ``Σ_t c_t L_t``, already computed) and one
        backward from the features carries ``Σ_t c_t ∂L_t/∂z`` into every other leaf below
        them (autograd then skips W's weight-gradient kernel)."""
        idx = [t for t, x in enumerate(items) if x is not None]
        own: list[Tensor] = [items[t] for t in idx]  # type: ignore[misc]
        heads = self._head_pass(own, None, idx, features, split_heads=True)
        feats = heads.features
        found = self._last_layer_rows(feats, heads.feature_cotangents())
        if not found:
            raise ValueError(
                "the last shared layer does not lie below the features passed to backward(); "
                "pass last_shared_parameters=... from the shared part, or no features"
            )
        norms = stacked.new_zeros(len(stacked)).detach()
        per_param = torch.stack([torch.linalg.vector_norm(g, dim=1) for _, g in found])
        norms[idx] = torch.linalg.vector_norm(per_param, dim=0).to(norms.dtype)
        method.observe_grad_norms(norms)
        info.grad_norms = norms
        raw = stacked.detach().requires_grad_(True)
        total = method.combine_present(raw, mask)
        total.backward()  # c = ∂total/∂L, and the gradients of the method's own parameters
        assert raw.grad is not None
        c = raw.grad[idx]
        heads.write_heads(c)
        for p, g in found:
            _accumulate(p, (c.to(device=g.device, dtype=g.dtype) @ g).view_as(p))
        done = {id(p) for p, _ in found}
        below = [x for x in leaves_above(feats, []) if id(x) not in done]
        if below:
            torch.autograd.backward(feats, grad_tensors=heads.feature_direction(c), inputs=below)

    def _last_layer_rows(
        self, feats: list[Tensor], cotangents: list[Tensor]
    ) -> list[tuple[Tensor, Tensor]]:
        """Per parameter of the last shared layer below ``feats``: its gradients of the n tasks
        whose feature gradients are the batch ``cotangents`` (``[n, *f.shape]`` per feature
        tensor), as an ``[n, numel]`` matrix. ``task_backward="loop"``: one backward from the
        features per task; ``"batched"``: one batched backward (``is_grads_batched``; PyTorch
        runs a loop inside it for convolutions and batch norm, and stacks ``[n, ...]`` copies
        of the layers between, so it is not faster on the CPU: ``bench_step.py``)."""
        n = cotangents[0].shape[0]
        if self.task_backward == "batched":
            grads = torch.autograd.grad(
                feats,
                self.last_shared,
                grad_outputs=cotangents,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            return [(p, g.reshape(n, -1)) for p, g in zip(self.last_shared, grads) if g is not None]
        found: list[tuple[Tensor, Tensor]] = []
        for t in range(n):
            grads = torch.autograd.grad(
                feats,
                self.last_shared,
                grad_outputs=[c[t] for c in cotangents],
                retain_graph=True,
                allow_unused=True,
            )
            reached = [(p, g) for p, g in zip(self.last_shared, grads) if g is not None]
            if t == 0:
                found = [(p, g.new_empty(n, g.numel())) for p, g in reached]
            for (_, rows), (_, g) in zip(found, reached):
                rows[t].copy_(g.reshape(-1))
        return found

    def _last_layer_grad_norms(self, items: list[Tensor | None], stacked: Tensor) -> Tensor:
        norms = stacked.new_zeros(len(stacked)).detach()
        for t, loss in enumerate(items):
            if loss is None:
                continue
            grads = torch.autograd.grad(
                loss, self.last_shared, retain_graph=True, allow_unused=True
            )
            sq = [g.pow(2).sum() for g in grads if g is not None]
            if sq:
                norms[t] = torch.stack(sq).sum().sqrt()
        return norms

    def _write_weighted_backward(
        self, own: list[Tensor], seeds: list[Tensor] | None, w: Tensor
    ) -> None:
        """memory='gramian': one more backward of ``Σ_t w_t L̃_t`` into the shared parameters."""
        first = own[0]
        coef = w.to(device=first.device, dtype=first.dtype)
        if seeds is not None:
            coef = coef * torch.stack(seeds).to(coef)
        total = (torch.stack(own) * coef).sum()
        grads = torch.autograd.grad(total, self.shared, allow_unused=True)
        for p, g in zip(self.shared, grads):
            if g is None:
                g = torch.zeros_like(p)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)

    def _nonfinite_row(self, J: Tensor | None, G: Tensor | None) -> int | None:
        """The first row of J holding NaN or Inf (read from the host Gramian when there is one)."""
        if G is not None:
            return first_nonfinite_row(G)
        assert J is not None  # without a Gramian there is a J
        return first_nonfinite_row_of(J) if self.check_finite else None

    def _refuse_nonfinite(self, task: str, info: StepInfo) -> None:
        if self.nonfinite == "raise":
            raise_nonfinite_gradient(
                f"task {task!r}", "; or pass nonfinite='skip' to Balancer to skip such steps"
            )
        self.skipped_steps += 1
        info.skipped = True
        warnings.warn(
            f"skipped a step: the gradient of task {task!r} holds NaN or Inf; no gradient was "
            f"written to the shared parameters ({self.skipped_steps} step(s) skipped so far)",
            RuntimeWarning,
            stacklevel=3,
        )

    def _gradient_stats(
        self,
        G: Tensor,
        dtype: torch.dtype,
        device: torch.device,
        present: Tensor,
        all_present: bool,
    ) -> tuple[Tensor, Tensor]:
        # From the float64 host Gramian of the step (the same the method used; robust to the
        # scale of the rows): one [n, n] transfer back to the device.
        sq = G.diagonal().clamp_min(0)
        sub_norms = sq.sqrt()
        denom = torch.outer(sub_norms, sub_norms)
        sub_cos = torch.where(denom > 0, G / torch.where(denom > 0, denom, 1.0), 0.0)
        sub_cos = sub_cos.clamp(-1.0, 1.0)
        big = torch.finfo(dtype).max
        sub_norms = sub_norms.clamp_max(big)
        both = torch.cat([sub_norms[:, None], sub_cos], dim=1).to(device=device, dtype=dtype)
        sub_norms, sub_cos = both[:, 0], both[:, 1:]
        if all_present:
            return sub_norms, sub_cos
        T = len(present)
        idx = present.nonzero().flatten()
        norms = torch.zeros(T, dtype=dtype, device=device)
        cos = torch.zeros(T, T, dtype=dtype, device=device)
        norms[idx] = sub_norms
        cos[idx[:, None], idx[None, :]] = sub_cos
        return norms, cos

    def _full_weights(self, weights: Tensor | None, present: Tensor, all_present: bool):
        if weights is None:
            return None
        if all_present:
            return weights
        if weights.shape[0] == len(present):
            return weights * present.to(weights.dtype)
        full = weights.new_zeros(len(present))
        full[present] = weights
        return full


def _accumulate(p: Tensor, g: Tensor) -> None:
    """``p.grad += g`` as autograd accumulates (``g`` is fresh: kept when ``.grad`` is None)."""
    if p.grad is None:
        p.grad = g
    else:
        p.grad.add_(g)


def _present(items: list[Tensor | None]) -> list[Tensor]:
    return [x for x in items if x is not None]


def _check_last_shared(last: list[nn.Parameter], shared: list[nn.Parameter]) -> None:
    """``last_shared_parameters`` each listed once, among ``shared_parameters``."""
    if len({id(p) for p in last}) != len(last):
        # GradNorm's step would count it twice: in the norms and in W's gradient
        raise ValueError(
            "last_shared_parameters lists the same parameter more than once (tied weights "
            "are one parameter); list each parameter once"
        )
    shared_ids = {id(p) for p in shared}
    outside = [p for p in last if id(p) not in shared_ids]
    if outside:  # e.g. a head's: measured by the path without features only
        raise ValueError(
            f"last_shared_parameters holds {len(outside)} parameter(s) not among "
            f"shared_parameters (the first of shape {list(outside[0].shape)}); pass "
            "the last shared layer's parameters, a part of shared_parameters"
        )
