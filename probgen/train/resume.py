"""A run's checkpoint: what the fit loop writes after every epoch, the check that a
resumed run continues the same training (its fingerprint), and the restore.

The file format and its I/O are :mod:`probgen.train.checkpoint`'s; this module says what
goes into the file and how a run comes back from it. Every entry an earlier probgen wrote
is read the same way, so its checkpoints resume as they did.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from probgen.errors import CheckpointError
from probgen.models.registry import current_settings, model_config
from probgen.train.checkpoint import (
    callable_modules,
    load_module_state,
    module_buffers,
    param_owners,
    param_store_constraints,
)
from probgen.train.config import NOT_RUN_DEFINING
from probgen.train.device import set_rng_state
from probgen.train.phases import phase_settings, pyro_params

__all__ = ["check_same_run", "checkpoint_state", "model_settings", "restore"]


def model_settings(module: torch.nn.Module | None) -> dict[str, Any] | None:
    """The constructor settings of a registered probgen model (``None`` for others)."""
    if module is None:
        return None
    try:
        return model_config(module)
    except TypeError:
        return None


def checkpoint_state(run: Any, epoch_done: int, rngs: Any) -> dict[str, Any]:
    """What the loop writes after ``epoch_done`` epochs: the weights, the Pyro parameters
    (with their constraints, owners and the pair's buffers), every phase's optimizer and
    schedule, the random states ``rngs``, the settings, history, early stopping and best
    weights, the callbacks' states, and the run's fingerprint (model class and settings,
    step, data)."""
    live = pyro_params(run.phases)
    # the modules of a model/guide pair (an AutoGuide, a PyroModule, a VAE's methods)
    pair_modules = callable_modules(
        getattr(run.step, "model", None), getattr(run.step, "guide", None)
    )
    params = {k: v.detach() for k, v in live.items()}
    module = run.module
    state = {
        "epoch": epoch_done,
        "steps": run.result.steps,
        "module": module.state_dict() if module is not None else None,
        "pyro_params": params,
        "pyro_constraints": param_store_constraints(params),
        "pyro_owners": param_owners(pair_modules, live),
        "pyro_buffers": module_buffers(pair_modules, skip=module),
        "phases": [
            {
                "name": st.phase.name,
                "names": list(st.names),
                "steps": st.steps,
                "optimizer": st.optimizer.state_dict() if st.optimizer else None,
                "scheduler": st.scheduler.state_dict() if st.scheduler else None,
                # the rate the run's settings give the phase, and the rate it started
                # with (the same but where an earlier probgen's checkpoint went on at
                # its own): a resumed run whose settings give another rate scales the
                # phase's rates from the one it started with (_apply_new_lr)
                "lr_setting": st.initial_lr(run.config.lr, run.config.phase_optim),
                "initial_lr": st.start_lr,
            }
            for st in run.phases
        ],
        "rng": rngs,
        "world_size": run.world,
        "config": run.config.to_dict(),
        "history": run.result.history,
        "best_epoch": run.result.best_epoch,
        "best_loss": run.result.best_loss,
        **run.best_weights.state_dict(),
        **run.stopping.state_dict(),
        "stopped_early": run.result.stopped_early,
        "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else {} for cb in run.callbacks],
        "module_class": type(module).__qualname__ if module is not None else None,
        "step": run.step.signature(),
        "data": getattr(run.train_data, "settings", None),
    }
    settings = model_settings(module)
    if settings is not None:
        state["model"] = settings
    return state


def check_same_run(run: Any, state: dict[str, Any]) -> None:
    """A resumed run must continue the same training: every setting that changes what it
    computes is the same (epochs, patience and lr may change), on the same data, with the
    same model, objective, particle count and phases.

    Raises:
        CheckpointError: one line listing what differs.
    """
    saved = state.get("config") or {}
    now = run.config.to_dict()
    diffs = [
        f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now"
        for k in now
        if k in saved and k not in NOT_RUN_DEFINING and saved[k] != now[k]
    ]
    if saved.get("lr_schedule") is not None and saved.get("epochs") != now["epochs"]:
        # a schedule spans the run's epochs: changing them changes every later step
        diffs.append(
            f"epochs: {saved.get('epochs')!r} in the checkpoint, {now['epochs']!r} "
            f"now (the {saved['lr_schedule']} schedule spans them)"
        )
    diffs += _phase_optim_differences(
        saved.get("phase_optim"), now.get("phase_optim"), _ran_with(state)
    )
    diffs += _model_differences(run.module, state)
    saved_step, mine_step = state.get("step") or {}, run.step.signature()
    diffs += [
        f"step {k}: {saved_step[k]!r} in the checkpoint, {mine_step[k]!r} now"
        for k in mine_step
        if k in saved_step and saved_step[k] != mine_step[k]
    ]
    diffs += _differences("data", state.get("data"), getattr(run.train_data, "settings", None))
    phases, mine = state.get("phases"), [s.phase.name for s in run.phases]
    if phases is not None and [p["name"] for p in phases] != mine:
        diffs.append(f"phases: {[p['name'] for p in phases]} in the checkpoint, {mine} now")
    if state.get("world_size", 1) != run.world and run.config.seed is not None:
        diffs.append(f"processes: {state.get('world_size', 1)} in the checkpoint, {run.world} now")
    if diffs:
        raise CheckpointError(
            f"cannot resume from {run.ckpt_path}: it belongs to another run "
            f"({'; '.join(diffs)}). Use another checkpoint path (--out) or start afresh "
            f"without resume."
        )


def _without_lr(phase_optim) -> dict[str, dict[str, Any]]:
    """``phase_optim`` less its learning rates (which a resumed run may change), phases
    left with no setting dropped; ``None`` (an earlier probgen's checkpoint) is ``{}``."""
    out = {}
    for name, settings in (phase_optim or {}).items():
        rest = {k: v for k, v in (settings or {}).items() if k != "lr"}
        if rest:
            out[name] = rest
    return out


def _ran_with(state: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """An earlier probgen's checkpoint (its settings hold no ``phase_optim``): each
    phase's optimizer parameter groups as saved, the settings the phase ran with (a GAN
    built with ``betas`` ran with them); ``{}`` for a checkpoint that records
    ``phase_optim``."""
    if "phase_optim" in (state.get("config") or {"phase_optim": None}):
        return {}
    return {
        entry["name"]: entry["optimizer"]["param_groups"]
        for entry in state.get("phases") or []
        if entry.get("optimizer")
    }


def _phase_optim_differences(saved, now, ran=None) -> list[str]:
    """The phases whose optimizer settings (other than the learning rate) differ.

    ``ran``: an earlier probgen's checkpoint's parameter groups by phase
    (:func:`_ran_with`); a setting today's ``phase_optim`` gives that all of its phase's
    groups held is the run's own, not a difference (the message says what they held)."""
    saved, now, ran = _without_lr(saved), _without_lr(now), ran or {}
    held = {}
    for name, groups in ran.items():
        if name not in now or not groups:
            continue
        asked = phase_settings({name: now[name]}, name)
        held[name] = {k: groups[0][k] for k in asked if k in groups[0]}
        kept = {
            k: v
            for k, v in now[name].items()
            if k == "optimizer" or not all(k in g and _same(g[k], asked[k]) for g in groups)
        }
        if kept:
            now[name] = kept
        else:
            del now[name]
    return [
        f"phase_optim[{k!r}]: {saved.get(k, {})!r} in the checkpoint"
        + (f" (its optimizer ran with {held[k]!r})" if held.get(k) else "")
        + f", {now.get(k, {})!r} now"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


def _same(a, b) -> bool:
    """``a == b`` as one truth value (False where the comparison gives none)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _model_differences(module, state: dict[str, Any]) -> list[str]:
    cls = state.get("module_class")
    mine = type(module).__qualname__ if module is not None else None
    if cls is not None and cls != mine:
        return [f"model: {cls} in the checkpoint, {mine} now"]
    saved, now = current_settings(state.get("model")), model_settings(module)
    if cls != mine or saved is None or now is None:
        return []
    # the same class built otherwise (a denoising and an inpainting autoencoder)
    return _differences("model setting", saved.get("args", {}), now.get("args", {}))


def _differences(what: str, saved, now) -> list[str]:
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return []
    return [
        f"{what} {k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


def restore(run: Any, state: dict[str, Any]) -> None:
    """Put a run back where its checkpoint ``state`` left it: weights, Pyro parameters,
    optimizers and schedules (with a changed ``lr`` applied), random states, history,
    early stopping, best weights and the callbacks' states."""
    if run.module is not None and state.get("module") is not None:
        load_module_state(run.module, state["module"], source=f"checkpoint {run.ckpt_path}")
    store_params = pyro_params(run.phases)
    with torch.no_grad():
        for name, value in (state.get("pyro_params") or {}).items():
            if name in store_params:
                store_params[name].copy_(value)
    _restore_phases(run, state.get("phases", []))
    _apply_new_lr(run, state)
    _note_speed_changes(run, state)
    rng = state["rng"]
    if isinstance(rng, list):  # one state per process of a torchrun job
        rng = rng[run.rank] if run.rank < len(rng) else rng[0]
    note = set_rng_state(rng, run.loader_gen)
    if note:
        _say(run, f"fit: resuming {run.ckpt_path}: {note}.")
    run.result.history = list(state["history"])
    run.result.best_epoch = state["best_epoch"]
    run.result.best_loss = state["best_loss"]
    run.result.steps = int(state.get("steps", 0))
    run.best_weights.load_state_dict(state)
    run.stopping.load_state_dict(state)
    run.start_epoch = state["epoch"]
    for cb, cb_state in zip(run.callbacks, state.get("callbacks", [])):
        if hasattr(cb, "load_state_dict") and cb_state:
            cb.load_state_dict(cb_state)
    if state.get("stopped_early"):
        run.finished = True  # that run was finished already
        run.result.stopped_early = True


def _restore_phases(run, saved_phases) -> None:
    for st, saved in zip(run.phases, saved_phases):
        by_name = dict(zip(st.names, st.params))
        missing = [n for n in saved["names"] if n not in by_name]
        if missing:
            raise CheckpointError(
                f"cannot resume from {run.ckpt_path}: phase {st.phase.name!r} had "
                f"parameters this run does not create ({', '.join(missing[:3])})."
            )
        order = list(saved["names"]) + [n for n in st.names if n not in saved["names"]]
        st.params = [by_name[n] for n in order]
        st.names = order
        st.steps = saved["steps"]
        if saved.get("optimizer") is not None:
            st.build_optimizer(run.total_steps(), run.steps_per_epoch)
            st.optimizer.load_state_dict(saved["optimizer"])
            if st.scheduler is not None and saved.get("scheduler") is not None:
                st.scheduler.load_state_dict(saved["scheduler"])


def _apply_new_lr(run, state) -> None:
    """A resumed run with other learning rates (``lr``, or ``phase_optim``'s, or a
    phase's own): every phase whose starting rate changed has its rates (and its
    schedule's) scaled by new/old, or, with per-parameter settings (no schedule), set
    anew; said in one line each.

    A phase's entry in the checkpoint says the rate the run's settings gave it
    (``lr_setting``: the run's ``lr``, ``phase_optim``'s or the phase's own) and the rate
    it started with (``initial_lr``); a rate is applied anew when the settings now give
    another, scaled from the one it started with. An earlier probgen's checkpoint says
    neither: there a rate is applied anew when the run's ``lr`` or ``phase_optim`` of it
    changed, scaled from the restored optimizer's starting rate (the rate the phase ran
    with: a GAN built with ``d_lr`` ran its D phase with it, whatever ``lr`` said); with
    none changed the phase goes on at the rate it ran with."""
    saved = state.get("config") or {}
    old_lr, new_lr = saved.get("lr"), run.config.lr
    old_po, new_po = saved.get("phase_optim"), run.config.phase_optim
    entries = state.get("phases") or []
    changed = []
    for i, st in enumerate(run.phases):
        new = st.initial_lr(new_lr, new_po)
        entry = entries[i] if i < len(entries) else {}
        if st.optimizer is None:
            continue
        if "lr_setting" in entry:
            old = entry.get("initial_lr")
            moved = entry["lr_setting"] != new
        else:  # an earlier probgen's checkpoint
            old = st.initial_lr(old_lr, old_po)
            moved = old != new
            if old is not None and not st.phase.per_parameter:
                first = st.optimizer.param_groups[0]
                old = first.get("initial_lr", first["lr"])
        st.start_lr = old
        if not moved:
            continue
        if old is not None and new is not None:
            scale = new / old  # exactly 1 when the rate is the one the phase ran with
            for g in st.optimizer.param_groups:
                g["lr"] = g["lr"] * scale
                if "initial_lr" in g:
                    g["initial_lr"] = g["initial_lr"] * scale
            if st.scheduler is not None:
                st.scheduler.base_lrs = [b * scale for b in st.scheduler.base_lrs]
        elif st.phase.per_parameter:
            # one group per parameter, in the order of st.names (per-parameter settings
            # go with no schedule: probgen.train.loop refuses the pair)
            for g, name in zip(st.optimizer.param_groups, st.names):
                if "lr" in st.group_settings(name):
                    g["lr"] = st.group_settings(name)["lr"]
        else:
            continue
        st.start_lr = new
        if old != old_lr or new != new_lr:  # not only the run's lr (said below)
            changed.append(f"phase {st.phase.name!r}: lr {new} (the checkpoint ran with {old})")
    if old_lr is not None and new_lr is not None and old_lr != new_lr:
        _say(
            run,
            f"fit: resuming {run.ckpt_path} with lr {new_lr} (the checkpoint ran with {old_lr})",
        )
    for line in changed:
        _say(run, f"fit: resuming {run.ckpt_path} with {line}")


def _note_speed_changes(run, state) -> None:
    """One line when the numerics settings differ from the checkpoint's run (allowed:
    a bfloat16 run on a GPU may go on in float32 on a CPU)."""
    saved = state.get("config") or {}
    changed = [
        f"{k} {getattr(run.config, k)!r} (the checkpoint ran with {saved[k]!r})"
        for k in ("precision", "matmul_precision")
        if k in saved and saved[k] != getattr(run.config, k)
    ]
    if changed:
        _say(run, f"fit: resuming {run.ckpt_path} with {' and '.join(changed)}")


def _say(run, line: str) -> None:
    if run.config.verbose and run.is_main:
        tqdm.write(line)
