"""One reproduction run in this process: ``python -m lightning_cnn.reproduce.worker JOB_JSON OUT_JSON THREADS``.

Trains the job (``jobs.make_job``) with the full recipe on its framework, tests it, and writes the run JSON and
the test-set probabilities atomically. The Keras side is ``keras_ref.reproduce.train_job``.
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from .jobs import is_full_recipe, run_name


def _train_lightning(job: dict, out_json: Path, threads: int) -> dict:
    import lightning
    import torch

    from ..analysis import history_rows
    from ..data import load_dataset
    from ..predict import predict_proba
    from ..trained import load_checkpoint_model
    from ..specs import get_spec
    from ..run.training import RunConfig, fit_and_test

    torch.set_num_threads(threads)
    spec = get_spec(job["model"])
    run_dir = out_json.with_suffix("")  # OUT/runs/<name>/: checkpoints, metrics.csv, learning_curves.png
    limit = job["limit_train_batches"]
    result = fit_and_test(RunConfig(
        model=spec.id, epochs=job["epochs"], seed=job["seed"], data_dir=job["data_dir"], out=str(run_dir),
        allow_partial_test=job["allow_partial_test"], accelerator=job["accelerator"] or "auto", devices="1",
        limit_train_batches=limit, progress_bar=False,
        limit_val_batches=limit if spec.recipe.validation_split or spec.recipe.validation_test_head else None))
    # The final model (what Keras evaluates and what was tested) is the last checkpoint, written every epoch.
    model, _ = load_checkpoint_model(run_dir / "checkpoints" / "last.ckpt")
    _, (x_test, _) = load_dataset(spec.dataset, job["data_dir"], allow_partial_test=job["allow_partial_test"])
    return {
        "test_accuracy": float(result["test_accuracy"]), "test_loss": float(result["test_loss"]),
        "n_test": int(result["test_samples"]), "test_is_partial": bool(result["test_is_partial"]),
        "history_rows": history_rows(result["history"], result["seconds_per_epoch"]),
        "probs": predict_proba(model, spec.preprocessing, x_test).astype("float32"),
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__},
        "device": result["machine"],
    }


def worker_main(job: dict, out_json: Path, threads: int) -> int:
    """Run one job and write its run JSON (+ probabilities .npy) atomically."""
    import io

    import numpy as np

    from ..analysis import labels_of
    from ..atomic import write_bytes, write_text
    from ..data import load_dataset
    from ..specs import get_spec

    started = time.perf_counter()
    if job["framework"] == "keras":
        from keras_ref.reproduce import train_job

        out = train_job(job, threads)
    else:
        out = _train_lightning(job, out_json, threads)

    spec = get_spec(job["model"])
    probs = out.pop("probs")
    _, (_, y_test) = load_dataset(spec.dataset, job["data_dir"], allow_partial_test=job["allow_partial_test"])
    pred_acc = float(np.mean(probs.argmax(axis=1) == labels_of(y_test)))
    buffer = io.BytesIO()
    np.save(buffer, probs)
    predictions = out_json.name.removesuffix(".json") + ".probs.npy"
    write_bytes(out_json.parent / predictions, buffer.getvalue())
    rows = out["history_rows"]
    seconds = [row["seconds"] for row in rows if "seconds" in row]
    epochs_requested = job["epochs"] or spec.recipe.epochs
    result = {
        "job": job, "model": spec.id, "framework": job["framework"], "seed": job["seed"],
        "full_recipe": is_full_recipe(job), **out,
        "epochs_run": len(rows), "epochs_requested": epochs_requested,
        "stopped_early": len(rows) < epochs_requested,
        "epoch_seconds": seconds, "median_epoch_seconds": statistics.median(seconds) if seconds else None,
        "predictions": predictions, "prediction_accuracy": pred_acc,
        "threads": threads, "wall_seconds": round(time.perf_counter() - started, 1),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if abs(pred_acc - result["test_accuracy"]) > 0.5 / max(1, result["n_test"]):
        result["warning"] = (f"accuracy of the saved probabilities {pred_acc:.4f} differs from the framework's own "
                             f"test accuracy {result['test_accuracy']:.4f}")
    write_text(out_json, json.dumps(result, indent=2) + "\n")
    print(f"{run_name(job)}: test accuracy {100 * result['test_accuracy']:.2f}%, "
          f"{result['epochs_run']} epochs, {result['wall_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
