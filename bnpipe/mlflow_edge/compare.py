"""Compare: rank the variants, register the winner and decide whether the alias ``champion`` moves.

The alias moves only when the winner beats the current champion on the same data: if the
champion was trained on the same snapshot digest its recorded metric is used, otherwise the
champion is re-scored on this snapshot's validation split. A version is registered once per
training result (``bnpipe.train_key``), so retries and re-runs create no duplicates.

The decision itself is ``bnpipe.mlflow_edge.champion.decide``; this module gathers its facts and acts on it.
Only MLflow's RESOURCE_DOES_NOT_EXIST means "no such model"; any other registry error is retried
with a logged backoff and, if it persists, fails the task (``RegistryUnavailable``) naming the
call, before the alias moves. The holder is read again just before the alias is set and read back
after: if another process moved it meanwhile, the decision is taken again against the new holder.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

from bnpipe.mlflow_edge import champion, evaluation, snapshot_store, tracking
from bnpipe.mlflow_edge.champion import ALIAS
from bnpipe.mlflow_edge.summary import Champion, RunSummary, ranked_first, variant_rows

# metric -> True when higher is better
METRICS = {"val_accuracy": True, "val_loss": False, "test_accuracy": True, "test_loss": False}
# Param approval: "auto" moves the alias here; "required" leaves the move to ``promote``, once a person approved it
APPROVALS = ("auto", "required")
AWAITING = "awaiting approval: "  # how the reason starts while a move waits for a person
# The parent run's tag bnpipe.approval (approval=required only): PENDING, NOT_ASKED (nothing to approve), then
# "approved by <user>", "rejected by <user>" or "timed out after <hours> h" once the person asked answered
PENDING, NOT_ASKED = "pending", "not asked: the alias would not move"


class NoHealthyVariant(RuntimeError):
    """Every variant diverged or failed: there is nothing to register."""


def rank(results: list[dict], metric: str = "val_accuracy") -> list[dict]:
    """Healthy results best first; ties go to the lower val_loss. Diverged ones are left out.

    With several seeds per configuration, configurations are ordered by their *mean* over
    seeds first (so one lucky seed cannot win), then the runs within a configuration.
    """
    from bnpipe.core.variants import config_name

    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    higher = METRICS[metric]
    healthy = [r for r in results if r.get("status") == "ok" and metric in r.get("metrics", {})]
    by_config: dict[str, list[float]] = {}
    for r in healthy:
        by_config.setdefault(config_name(r["name"]), []).append(r["metrics"][metric])
    mean = {c: sum(vs) / len(vs) for c, vs in by_config.items()}

    def key(r):
        m = r["metrics"]
        v = m.get(metric, -math.inf if higher else math.inf)
        c = mean[config_name(r["name"])]
        return (-c if higher else c, -v if higher else v, m.get("val_loss", math.inf), r["name"])

    ranked = sorted(healthy, key=key)
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


def table_rows(results: list[dict], ranked: list[dict]) -> list[dict]:
    """One flat row per variant, ranked ones first, for CSV and Markdown (``VariantRow.table_row``)."""
    return [row.table_row() for row in ranked_first(variant_rows(results, ranked))]


def better(a: float, b: float, metric: str) -> bool:
    return champion.beats(a, b, METRICS[metric])


class RegistryUnavailable(RuntimeError):
    """A registry call kept failing after its retries: what it would have decided was not decided."""


# Registry calls are retried ATTEMPTS times in all, waiting FIRST_WAIT, then twice as long, ...
ATTEMPTS, FIRST_WAIT = 4, 1.0
MISSING = "RESOURCE_DOES_NOT_EXIST"  # the only answer that means "there is no such thing"


def _registry_errors() -> tuple:
    """What a registry call raises when the server did not answer as asked (not a bug here).

    MlflowException covers error answers and, over HTTP, timeouts and dropped connections;
    OSError covers local stores and artifact downloads (requests' errors are OSErrors).
    """
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def _load_errors() -> tuple:
    """What downloading and loading a model file can raise, besides the registry's errors."""
    import zipfile

    return (*_registry_errors(), ValueError, zipfile.BadZipFile)


_RAISE = object()


def _retrying(what: str, call, *args, missing=_RAISE, errors: tuple | None = None):
    """``call(*args)``, retried with a logged, doubling wait while it raises one of ``errors``.

    Only MLflow's RESOURCE_DOES_NOT_EXIST answer returns ``missing`` (when one is given):
    every other error is retried and, if it persists, raised as ``RegistryUnavailable``
    naming ``what`` could not be done.
    """
    errors = errors or _registry_errors()
    wait = FIRST_WAIT
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call(*args)
        except errors as exc:
            if missing is not _RAISE and getattr(exc, "error_code", None) == MISSING:
                return missing
            if attempt == ATTEMPTS:
                raise RegistryUnavailable(f"could not {what} after {ATTEMPTS} attempts: {exc}") from exc
            first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            print(
                f"bnpipe compare: could not {what} (attempt {attempt} of {ATTEMPTS}: {first_line}); "
                f"retrying in {wait:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
            wait *= 2


def _read_holder(client, name: str):
    """The model version holding ``champion`` (None: no such model, or no alias on it yet) and the model."""
    # Not get_model_version_by_alias: a missing alias is answered as INVALID_PARAMETER_VALUE, which
    # also means a malformed request; the registered model's alias table says it without ambiguity.
    model = _retrying(f"read alias {ALIAS} of {name}", lambda: client.get_registered_model(name), missing=None)
    held = model.aliases.get(ALIAS) if model is not None else None
    if held is None:
        return None, model
    mv = _retrying(f"read {name} v{held}, the holder of {ALIAS}", lambda: client.get_model_version(name, str(held)))
    return mv, model


def _ensure_model(client, name: str, dataset: str) -> None:
    """Create the registered model; one created meanwhile (elsewhere, or by a try whose answer was lost) will do."""
    from mlflow.exceptions import MlflowException

    def create():
        try:
            client.create_registered_model(name, description=f"bnpipe champion models for {dataset}")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    _retrying(f"create registered model {name}", create)


def _versions_by_tag(client, name: str, key: str, value: str) -> list:
    versions = _retrying(
        f"search the versions of {name} for {key}={value}", lambda: client.search_model_versions(f"name='{name}'")
    )
    return [v for v in versions if v.tags.get(key) == value]


def _wait_ready(client, version, timeout: float = 120.0):
    """The version once the registry reports it READY; the alias never points at a half-registered one."""
    deadline = time.monotonic() + timeout
    while version.status != "READY":
        if version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"model version {version.name} v{version.version} is {version.status}, not READY")
        time.sleep(0.5)
        version = _retrying(
            f"read {version.name} v{version.version}", client.get_model_version, version.name, version.version
        )
    return version


def _log_full_model(client, winner: dict, snapshot: dict):
    """Log the winner's compact model.keras as an MLflow pyfunc model in its run (into the variant's
    LoggedModel when it has one) and evaluate it on the test split; returns the model URI."""
    from bnpipe.core.train import MODEL_ARTIFACT
    from bnpipe.mlflow_edge import serving

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(winner["run_id"], MODEL_ARTIFACT, tmp)
        uri = serving.log_model(winner["run_id"], local, snapshot, client.tracking_uri, winner.get("model_id"))
    evaluation.evaluate_model(client, uri, winner["run_id"], snapshot)
    return uri


def _signature_inputs(client, name: str, version: str) -> dict | None:
    """The registered version's raw inputs from its signature: ``{"columns": [...]}`` or ``{"shape": [...]}``."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    # get_model_info reads MLflow's global URIs. Point them at this client's server for this call
    # only: set_registry_uri would otherwise pin the registry (and MLFLOW_REGISTRY_URI) for the
    # rest of the process, and a later set_tracking_uri (dag.test, a test session) would no longer
    # move it. MLflow has no public "unset", so the registry's module state is put back as it was.
    had_env = "MLFLOW_REGISTRY_URI" in os.environ  # process state to put back, not configuration
    env_value = os.environ["MLFLOW_REGISTRY_URI"] if had_env else None
    saved = mlflow.get_tracking_uri(), registry_utils._registry_uri, env_value
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    try:
        signature = mlflow.models.get_model_info(f"models:/{name}/{version}").signature
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        if not had_env:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = saved[2]
    if signature is None or signature.inputs is None:
        return None
    if signature.inputs.is_tensor_spec():
        return {"shape": [int(d) for d in signature.inputs.inputs[0].shape[1:]]}
    return {"columns": signature.inputs.input_names()}


def _load_keras(client, run_id: str):
    """The compact model.keras a training run logged, downloaded and loaded."""
    import keras

    from bnpipe.core.train import MODEL_ARTIFACT

    with tempfile.TemporaryDirectory() as tmp:
        model = keras.models.load_model(client.download_artifacts(run_id, MODEL_ARTIFACT, tmp))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _rescore(model, snapshot: dict, metric: str) -> float:
    """``metric`` of ``model`` on the snapshot split it names (``val_accuracy``: the validation split).

    bnpipe's own scoring, not ``mlflow.models.evaluate``: the gate compares the champion with the
    candidate's recorded ``val_accuracy``/``val_loss``, which Keras measured on the compact model, so
    the champion is measured the same way on the same rows (evaluate's ``accuracy_score`` is computed
    from pyfunc predictions and has no loss). Its threshold rule (strictly better; a tie keeps the
    champion; a champion that cannot read this data is replaced) is ``champion.decide``, which also
    handles the cases evaluate's ``MetricThreshold`` has no words for. evaluate checks the model that
    gets registered: ``evaluation.evaluate_model``.
    """
    from bnpipe.core.train import evaluate

    split = metric.split("_", 1)[0]
    return evaluate(model, snapshot_store.local_snapshot(snapshot)["path"], split)[metric]


def _holder(client, name: str, mv, snapshot: dict, metric: str) -> champion.Holder:
    """How the version holding the alias fares on this snapshot: its recorded metric, a re-score, or a mismatch.

    Whether it cannot score this data is decided from its inputs and the snapshot's alone; a failed
    download or load is retried and then raised, never taken for "cannot score".
    """
    number = int(mv.version)
    value = champion.recorded(mv.tags, snapshot["digest"], metric)
    if value is not None:
        return champion.Holder(number, value, "recorded on the same snapshot")
    inputs = _retrying(f"read the signature of {name} v{number}", lambda: _signature_inputs(client, name, mv.version))
    why = champion.mismatch(inputs, snapshot) if inputs is not None else None
    if why:
        return champion.Holder(number, mismatch=why)
    model = _retrying(
        f"download and load {name} v{number}'s model (run {mv.run_id})",
        lambda: _load_keras(client, mv.run_id),
        errors=_load_errors(),
    )
    if inputs is None:  # registered without a signature: the model's own input shape says it
        why = champion.mismatch({"shape": list(model.input_shape[1:])}, snapshot)
        if why:
            return champion.Holder(number, mismatch=why)
    return champion.Holder(number, _rescore(model, snapshot, metric), f"re-scored on snapshot {snapshot['digest']}")


def _interval(result: dict, key: str) -> tuple[float, float] | None:
    """The (low, high) interval of ``key`` when seeds > 1: ``result["interval"][key]`` or ``<key>_ci_low/high``."""
    iv = (result.get("interval") or {}).get(key)
    if iv is None:
        m = result.get("metrics", {})
        lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
        iv = (lo, hi) if lo is not None and hi is not None else None
    return (float(iv[0]), float(iv[1])) if iv is not None else None


def _metric_text(result: dict, key: str) -> str:
    value = result.get("metrics", {}).get(key)
    text = f"{key} {value:.4f}" if value is not None else f"{key} n/a"
    iv = _interval(result, key)
    if iv:
        seeds = result.get("n_seeds") or result.get("seeds")
        text += f" (95% interval {iv[0]:.4f}..{iv[1]:.4f}" + (f" over {seeds} seeds)" if seeds else ")")
    return text


CARD_ALIAS = f"**Alias `{ALIAS}`**: "  # the model card's paragraph on the alias starts so


def model_card(snapshot: dict, winner: dict, runner_up: dict | None, metric: str, reason: str, link: str) -> str:
    """The model version's description: data, winner, runner-up, why the alias moved or not, the DAG run."""
    keys = [metric] + [k for k in ("val_loss", "test_accuracy") if k != metric]
    lines = [
        f"**Dataset** `{snapshot['dataset']}`, snapshot digest `{snapshot['digest']}` "
        f"({snapshot['n_train']} train / {snapshot['n_val']} val / {snapshot['n_test']} test rows).",
        f"**Winner** `{winner['name']}`: " + ", ".join(_metric_text(winner, k) for k in keys) + ".",
        f"**Runner-up** `{runner_up['name']}`: " + ", ".join(_metric_text(runner_up, k) for k in keys) + "."
        if runner_up
        else "**Runner-up**: none (a single healthy variant).",
        CARD_ALIAS + reason,
        f"**Airflow DAG run**: {link or 'n/a (not run by Airflow)'}",
        "Takes raw inputs: scaling is inside the model. Use it with `bnpipe score` or the `bnpipe_score` DAG, "
        "or serve it with `bnpipe serve`.",
    ]
    return "\n\n".join(lines)


def _register_version(client, name: str, winner: dict, snapshot: dict, metric: str):
    """A new READY version for the winner. A create whose answer was lost is found by its train_key, not repeated."""
    uri = _retrying(f"log run {winner['run_id']}'s model for {name}", lambda: _log_full_model(client, winner, snapshot))
    key_tag = tracking.TAG + "train_key"
    tags = {
        key_tag: winner["train_key"],
        tracking.TAG + "data_digest": snapshot["digest"],
        tracking.TAG + "variant": winner["name"],
        tracking.TAG + "metric": metric,
        tracking.TAG + "metric_value": repr(winner["metrics"][metric]),
    }
    # A tracking server accepts a "models:/m-..." source only together with the logged model's id.
    model_id = uri.removeprefix("models:/") if uri.startswith("models:/m-") else None
    tries = []

    def create():
        if tries:  # an earlier try may have registered it before its answer was lost
            key = tags[key_tag]
            found = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get(key_tag) == key]
            if found:
                return found[0]
        tries.append(1)
        return client.create_model_version(name, uri, run_id=winner["run_id"], tags=tags, model_id=model_id)

    version = _retrying(f"register run {winner['run_id']} as a version of {name}", create)
    return _wait_ready(client, version)


def _settle(client, name: str, number: int, value: float, snapshot: dict, metric: str, decision, seen, rounds=3):
    """Move the alias to ``number``, checking the holder just before each set and reading it back after.

    ``decision`` was taken against holder ``seen`` (a version number or None) before the version
    was registered, which takes seconds. Whenever the holder read is not the one the decision was
    taken against, another process moved the alias meanwhile and the decision is taken again
    against the new holder. Returns the final decision and the version holding the alias then.
    """
    higher = METRICS[metric]
    sets = 0
    while True:
        now, _ = _read_holder(client, name)
        current = int(now.version) if now is not None else None
        if current == number:
            return decision, number
        if current != seen:
            holder = _holder(client, name, now, snapshot, metric) if now is not None else None
            who = f"moved it to v{current}" if now is not None else "removed it"
            again = champion.decide(number, value, holder, metric, higher)
            if not again.moves:
                return champion.Decision(False, f"another process {who} meanwhile; {again.reason}"), current
            decision = champion.Decision(True, f"{again.reason} (decided again: another process {who} meanwhile)")
        if sets == rounds:
            raise RegistryUnavailable(
                f"alias {ALIAS} of {name} kept moving away from v{number} ({rounds} times): another process is "
                "setting it concurrently; run one registration at a time"
            )
        _retrying(
            f"set alias {ALIAS} of {name} to v{number}",
            lambda: client.set_registered_model_alias(name, ALIAS, str(number)),
        )
        sets, seen = sets + 1, number


def register(client, ranked: list[dict], snapshot: dict, metric: str, link: str = "", approval: str = "auto") -> dict:
    """Register the winner (once per train_key) and move ``champion`` if it beats the current one.

    With ``approval="required"`` a move the decision calls for waits for a person instead: the
    outcome says ``awaiting_approval`` and its reason starts with ``AWAITING``; ``promote`` moves the
    alias once approved. Everything the decision needs is read before anything is written, so a registry that does not
    answer fails the task with nothing registered and the alias unchanged. Raises
    ``RegistryUnavailable`` naming the call that kept failing and what had changed by then.
    """
    if not ranked:
        raise NoHealthyVariant("every variant diverged or failed; no model registered and the alias did not move")
    winner, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    name = tracking.model_name(snapshot["dataset"])
    value = winner["metrics"][metric]
    done = f"nothing registered; alias {ALIAS} unchanged"
    try:
        current, model = _read_holder(client, name)
        if model is None:
            _ensure_model(client, name, snapshot["dataset"])
        existing = _versions_by_tag(client, name, tracking.TAG + "train_key", winner["train_key"])
        if current is None:
            holder = None
        elif existing and int(existing[0].version) == int(current.version):
            holder = champion.Holder(int(current.version))
        else:
            holder = _holder(client, name, current, snapshot, metric)
        if existing:
            version = _wait_ready(client, existing[0])
        else:
            version = _register_version(client, name, winner, snapshot, metric)
        number = int(version.version)
        done = f"{name} v{number} registered; alias {ALIAS} unchanged"
        decision = champion.decide(number, value, holder, metric, METRICS[metric])
        holds = holder.version if holder is not None else None
        waits = decision.moves and approval == "required"
        if waits:
            decision = champion.Decision(False, AWAITING + decision.reason)
        elif decision.moves:
            done = f"{name} v{number} registered; alias {ALIAS} set to it but not verified"
            decision, holds = _settle(client, name, number, value, snapshot, metric, decision, holds)
        done = f"{name} v{number} registered; alias {ALIAS} {'holds it' if decision.moves else 'unchanged'}: "
        done += decision.reason
        card = model_card(snapshot, winner, runner_up, metric, decision.reason, link)
        _retrying(
            f"write the model card of {name} v{number}",
            lambda: client.update_model_version(name, str(number), description=card),
        )
    except RegistryUnavailable as exc:
        raise RegistryUnavailable(
            f"{exc}. By then: {done}. Retrying the task is safe: it finds the version by its train_key "
            "and decides again."
        ) from exc.__cause__
    return {
        "model_name": name,
        "version": number,
        "run_id": winner["run_id"],
        "variant": winner["name"],
        "alias_moved": decision.moves,
        "reason": decision.reason,
        "champion_version": holds,
        "awaiting_approval": waits,
    }


def log_table(client, parent_run_id: str, rows: list[dict], out_dir: str | Path) -> dict:
    """Write the comparison as CSV and Markdown and log both to the parent run."""
    import pandas as pd

    from bnpipe.base.render import markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "comparison.csv", out / "comparison.md"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    md_path.write_text(markdown_table(rows) + "\n")
    client.log_artifact(parent_run_id, str(csv_path), "comparison")
    client.log_artifact(parent_run_id, str(md_path), "comparison")
    return {"csv": str(csv_path), "markdown": str(md_path)}


def conclude(
    results: list[dict], snapshot: dict, parent_run_id: str, metric: str, link: str = "", approval: str = "auto"
) -> RunSummary:
    """Rank, log the table, register and record the decision on the parent run. Returns the run's summary.

    The decision goes to the parent run's tags (``bnpipe.winner``, ``bnpipe.alias_moved``,
    ``bnpipe.alias_reason``, ``bnpipe.registered_version``; with ``approval="required"`` also
    ``bnpipe.approval``, see ``PENDING``), from which ``bnpipe.reporting.summaries`` rebuilds
    the same summary later.
    """
    client = tracking.connect()
    results = [r for r in results if r]
    ranked = rank(results, metric)
    with tempfile.TemporaryDirectory() as tmp:
        log_table(client, parent_run_id, table_rows(results, ranked), tmp)
    try:
        registered = register(client, ranked, snapshot, metric, link, approval)
    except NoHealthyVariant as exc:
        client.set_tag(parent_run_id, tracking.TAG + "failure", str(exc))
        client.set_terminated(parent_run_id, status="FAILED")
        raise
    decision = {
        "winner": registered["variant"],
        "alias_moved": str(registered["alias_moved"]).lower(),
        "alias_reason": registered["reason"],
        "registered_version": str(registered["version"]),
    }
    if approval == "required":
        decision["approval"] = PENDING if registered["awaiting_approval"] else NOT_ASKED
    for key, value in decision.items():
        client.set_tag(parent_run_id, tracking.TAG + key, value)
    tracking.log_metrics(client, parent_run_id, {f"best_{metric}": ranked[0]["metrics"][metric]})
    client.set_terminated(parent_run_id, status="FINISHED")
    parent = client.get_run(parent_run_id)
    return RunSummary(
        experiment_id=parent.info.experiment_id,
        parent_run_id=parent_run_id,
        metric=metric,
        variants=variant_rows(results, ranked),
        dag_run_id=parent.data.tags.get(tracking.TAG + "dag_run_id"),
        status=parent.info.status,
        champion=Champion(**registered),
    )


# --- approval=required: the move a person approved, or the reason it did not happen ---------------------


def _record(client, parent_run_id: str, tags: dict) -> None:
    """Set the parent run's ``bnpipe.<key>`` tags, each call retried like every registry call."""
    for key, value in tags.items():
        _retrying(f"tag parent run {parent_run_id} with {tracking.TAG + key}", client.set_tag, parent_run_id,
                  tracking.TAG + key, value)  # fmt: skip


def _rewrite_card_reason(client, name: str, number: int, reason: str) -> None:
    """Replace the alias paragraph (``CARD_ALIAS``) of version ``number``'s model card by ``reason``."""
    mv = _retrying(f"read {name} v{number}", client.get_model_version, name, str(number))
    card = "\n\n".join(CARD_ALIAS + reason if part.startswith(CARD_ALIAS) else part
                        for part in (mv.description or "").split("\n\n"))  # fmt: skip
    _retrying(f"write the model card of {name} v{number}", lambda: client.update_model_version(name, str(number), card))


def _registered_value(client, name: str, number: int, snapshot: dict, metric: str) -> float:
    """Version ``number``'s ``metric`` on this snapshot: as recorded at registration, else its run's metric."""
    mv = _retrying(f"read {name} v{number}", client.get_model_version, name, str(number))
    value = champion.recorded(mv.tags, snapshot["digest"], metric)
    if value is None:
        value = _retrying(f"read run {mv.run_id}", client.get_run, mv.run_id).data.metrics[metric]
    return value


def promote(outcome: dict, snapshot: dict, parent_run_id: str, metric: str, approver: str) -> dict:
    """Move ``champion`` to the version a person approved, with ``register``'s guarantees.

    ``outcome`` is compare's champion outcome while it awaits approval: the version, and the holder
    its decision was taken against (``champion_version``). The holder is read again just before the
    alias is set and read back after (``_settle``): if another run moved the alias while the approval
    was pending, the decision is taken again against the new holder, so an approval never replaces a
    better champion. A retry finds the alias on the version already and moves nothing. Records the
    outcome in the parent run's tags and the version's model card; returns ``outcome`` updated.
    """
    name, number = outcome["model_name"], int(outcome["version"])
    if not outcome.get("awaiting_approval"):
        raise ValueError(f"{name} v{number} is not awaiting approval ({outcome.get('reason')}); nothing to promote")
    client = tracking.connect()
    verdict = f"approved by {approver}"
    try:
        value = _registered_value(client, name, number, snapshot, metric)
        decision = champion.Decision(True, outcome["reason"].removeprefix(AWAITING))
        decision, holds = _settle(client, name, number, value, snapshot, metric, decision, outcome["champion_version"])
        reason = f"{decision.reason} ({verdict})"
        _record(client, parent_run_id, {"alias_moved": str(decision.moves).lower(), "alias_reason": reason,
                                        "approval": verdict})  # fmt: skip
        _rewrite_card_reason(client, name, number, reason)
    except RegistryUnavailable as exc:
        raise RegistryUnavailable(
            f"{exc}. {name} v{number} was {verdict}; retrying the task is safe: it reads the holder again"
        ) from exc.__cause__
    return {**outcome, "alias_moved": decision.moves, "reason": reason, "champion_version": holds,
            "awaiting_approval": False}  # fmt: skip


def keep(outcome: dict, parent_run_id: str, verdict: str) -> dict:
    """Leave ``champion`` where it is because the move was not approved (``verdict``: who rejected it, or that
    the request timed out); records why in the parent run's tags and the version's model card."""
    name, number = outcome["model_name"], int(outcome["version"])
    reason = f"{verdict}; alias {ALIAS} unchanged (it would have moved: {outcome['reason'].removeprefix(AWAITING)})"
    client = tracking.connect()
    _record(client, parent_run_id, {"alias_moved": "false", "alias_reason": reason, "approval": verdict})
    _rewrite_card_reason(client, name, number, reason)
    return {**outcome, "alias_moved": False, "reason": reason, "awaiting_approval": False}
