"""A run on a Ray cluster (`bonito.runs.scale`): the same store and tasks.jsonl as in one process,
through a lost worker node and a killed driver; bad input refused before any work is sent.
One simulated cluster per module (a head without GPU, two worker nodes with a fake GPU each),
engines of the tiny generator on CPUs."""

import dataclasses
import functools
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_cli
from servers import VLLM_ARGS

from bonito.cli import main
from bonito.engines import load_engine
from bonito.errors import BonitoError
from bonito.generate.mix import TaskMix
from bonito.prompt.sampling import SamplingParams
from bonito.runs.run import Budgets, RunConfig, generate_run
from bonito.runs.scale import Cluster, RayEngines, warn_network_folder
from bonito.runs.state import State

EXAMPLES = Path(__file__).parent.parent / "examples" / "passages.jsonl"
BLOCK = 8
pytestmark = pytest.mark.ray


@dataclass(frozen=True)
class Slow:
    """Loads the tiny engine, each block of which then takes `seconds` longer: kills land
    mid-run."""

    model: str
    seconds: float = 0.4

    def __call__(self):
        return SlowEngine(load_engine(self.model, "transformers", batch_size=4), self.seconds)


@dataclass(frozen=True)
class SlowEngine:
    engine: object
    seconds: float

    def generate(self, prompts, sampling, seeds=None):
        time.sleep(self.seconds)
        return self.engine.generate(prompts, sampling, seeds)


@dataclass(frozen=True)
class Broken:
    """An engine that never starts; each try leaves a line in `tries`."""

    tries: str

    def __call__(self):
        with open(self.tries, "a") as file:
            file.write("tried\n")
        raise BonitoError("this engine cannot start")


def scenario(folder: Path, model: Path, greedy: bool) -> RunConfig:
    """48 distinct passages sampled, or 12 passages four times each decoded greedily (so that
    dedup marks many duplicates); yes-no QA and NLI of each. The passages are written into
    `folder` once."""
    path = folder / ("greedy.jsonl" if greedy else "sampled.jsonl")
    if not path.exists():
        texts = [json.loads(line)["text"] for line in EXAMPLES.read_text().splitlines()]
        rows = texts * 4 if greedy else [f"{t} (Record {i}.)" for i, t in enumerate(texts * 4)]
        path.write_text("".join(json.dumps({"text": text}) + "\n" for text in rows))
    sampling = SamplingParams(max_tokens=32, seed=3, temperature=0.0 if greedy else 0.7)
    return RunConfig(str(model), (str(path),), TaskMix.parse(["ynqa,nli"]), 2, sampling)


def cli_args(inputs: Path, model: Path, folder: Path) -> list[str]:
    """The greedy scenario as a command."""
    scenario(inputs, model, greedy=True)
    return [
        *("generate", inputs / "greedy.jsonl", "-t", "ynqa,nli", "--per-context", 2),
        *("--model", model, "--engine", "transformers", "--batch-size", 4, "--output", folder),
        *("--max-tokens", 32, "--seed", 3, "--temperature", 0),
    ]


def contents(folder: Path, save_order: bool = True) -> tuple:
    """What two runs must share: requests, completions, tasks (in the order they were saved)
    and tasks.jsonl's bytes."""
    db = sqlite3.connect(folder / "run.sqlite")
    try:
        order = "seq" if save_order else "request_id, sample"
        return (
            db.execute("SELECT * FROM requests ORDER BY id").fetchall(),
            db.execute(
                "SELECT request_id, sample, text, finish_reason, prompt_tokens, completion_tokens "
                "FROM completions ORDER BY request_id, sample"
            ).fetchall(),
            db.execute(
                f"SELECT request_id, sample, input, output, status, reason FROM tasks "
                f"ORDER BY {order}"
            ).fetchall(),
            (folder / "tasks.jsonl").read_bytes(),
        )
    finally:
        db.close()


def done_requests(folder: Path) -> int:
    try:
        db = sqlite3.connect(folder / "run.sqlite", timeout=30)
        try:
            return db.execute("SELECT COUNT(*) FROM requests WHERE status = 'done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not there yet
        return 0


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr("bonito.runs.run.CHUNK_SIZE", BLOCK)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Engines in this process on one torch thread, as those on the workers (one CPU each)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cluster():
    """A head without GPU and two worker nodes with a fake GPU each; this module's alone."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bonito[ray]')")
    from ray.cluster_utils import Cluster as RayCluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Slow, Broken
    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")  # Ray's 15 starves engines on a busy machine
        started = RayCluster(initialize_head=True, head_node_args={**node, "num_gpus": 0})
        try:
            for _ in range(2):
                started.add_node(**node, num_gpus=1)
            started.wait_for_nodes()
            started.node = node
            yield started
        finally:
            started.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Where the scenarios' passages are (a task's source names its file)."""
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="module")
def reference(tiny_model, inputs, tmp_path_factory):
    """Each scenario run in one process: the sampled one through the library, the greedy one
    through the command line."""
    runs = {}
    load = functools.partial(load_engine, str(tiny_model), "transformers", batch_size=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bonito.runs.run.CHUNK_SIZE", BLOCK)
        runs[False] = tmp_path_factory.mktemp("reference") / "run"
        generate_run(runs[False], scenario(inputs, tiny_model, False), load)
        runs[True] = tmp_path_factory.mktemp("reference") / "run"
        patch.setattr(sys, "argv", ["bonito", *map(str, cli_args(inputs, tiny_model, runs[True]))])
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code in (0, None)
    return runs


def test_ray_run_is_the_single_process_run(
    cluster, reference, inputs, tiny_model, tmp_path, capsys, monkeypatch
):
    """`bonito generate ... --ray ADDRESS`: the run of one process, byte for byte, with the
    many duplicates that greedy decoding of repeated passages gives."""
    folder = tmp_path / "run"
    args = [*cli_args(inputs, tiny_model, folder), "--ray", cluster.address]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    duplicates = json.loads((folder / "summary.json").read_text())["summary"]["duplicates"]
    assert duplicates >= 20
    assert contents(folder) == contents(reference[True])


DRIVER = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import ray
import bonito.runs.run
import test_scale
from bonito.runs.run import generate_run
from bonito.runs.scale import Cluster

ray.cloudpickle.register_pickle_by_value(test_scale)
bonito.runs.run.CHUNK_SIZE = test_scale.BLOCK
folder, inputs, model, address = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
config = test_scale.scenario(inputs, Path(model), greedy=False)
generate_run(folder, config, test_scale.Slow(model), cluster=Cluster(address))
"""


def test_killed_driver_resumes_with_nothing_lost_or_repeated(
    cluster, reference, inputs, tiny_model, tmp_path
):
    """The driver SIGKILLed mid-run, then the same command: every request generated once, and
    the run of one process."""
    folder = tmp_path / "run"
    command = [sys.executable, "-c", DRIVER, str(Path(__file__).parent), str(folder)]
    command += [str(inputs), str(tiny_model), cluster.address]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: done_requests(folder) >= 2 * BLOCK or driver.poll() is not None)
    finally:
        driver.send_signal(signal.SIGKILL)
        _, err = driver.communicate()
    assert driver.returncode == -signal.SIGKILL, err.decode()
    assert 2 * BLOCK <= done_requests(folder) < 96

    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    db = sqlite3.connect(folder / "run.sqlite")
    count, distinct = db.execute(
        "SELECT COUNT(*), COUNT(DISTINCT request_id || '-' || sample) FROM completions"
    ).fetchone()
    db.close()
    assert count == distinct == 96
    assert contents(folder, save_order=False) == contents(reference[False], save_order=False)


def test_a_budget_stops_a_ray_run_and_the_run_goes_on_without_ray(
    cluster, reference, inputs, tiny_model, tmp_path
):
    config, folder = scenario(inputs, tiny_model, greedy=False), tmp_path / "run"
    load = functools.partial(load_engine, str(tiny_model), "transformers", batch_size=4)
    stopped = generate_run(
        folder, config, load, budgets=Budgets(max_tasks=4), cluster=Cluster(cluster.address)
    )
    assert (stopped.state, stopped.detail) == (State.STOPPED, "max_tasks (--max-tasks) 4 reached")
    assert stopped.summary.accepted == 4
    assert done_requests(folder) < 96
    assert generate_run(folder, config, load).state == "finished"
    assert contents(folder, save_order=False) == contents(reference[False], save_order=False)


def test_without_ray_one_sentence_names_the_extra(
    tiny_model, inputs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where it is absent
    folder = tmp_path / "run"
    code, _, err = run_cli(
        [*cli_args(inputs, tiny_model, folder), "--ray", "auto"], capsys, monkeypatch
    )
    assert (
        code == 1
        and "cluster (--ray) needs Ray, which is not installed: pip install 'bonito[ray]'" in err
    )
    code, _, err = run_cli(
        [*cli_args(inputs, tiny_model, folder), "--engines", 2], capsys, monkeypatch
    )
    assert (
        code == 1
        and "engines (--engines) and gpus_per_engine (--gpus-per-engine) go with a Ray" in err
    )
    assert "Traceback" not in err and not folder.exists()


def refused(config, load, asked, folder) -> str:
    """The sentence a run on `asked` is refused with, before its folder is made."""
    with pytest.raises(BonitoError) as error:
        generate_run(folder, config, load, cluster=asked)
    assert not folder.exists()
    return str(error.value)


def test_an_address_with_no_cluster(tiny_model, inputs, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bonito[ray]')")
    config, load = scenario(inputs, tiny_model, False), Slow(str(tiny_model))
    sentence = refused(config, load, Cluster("127.0.0.1:9"), tmp_path / "run")
    assert sentence.startswith("No Ray cluster at 127.0.0.1:9 (") and "ray start --head" in sentence


@pytest.mark.parametrize(
    "asked, room",
    [(Cluster(engines=3), "room for 2 engines"), (Cluster(gpus_per_engine=2), "room for 0")],
    ids=["too-many-engines", "too-many-gpus-each"],
)
def test_a_cluster_without_the_gpus_asked_for(cluster, inputs, tiny_model, tmp_path, asked, room):
    asked = dataclasses.replace(asked, address=cluster.address)
    sentence = refused(
        scenario(inputs, tiny_model, False), Slow(str(tiny_model)), asked, tmp_path / "run"
    )
    assert room in sentence and "add nodes, or ask for fewer engines (--engines)" in sentence


def test_a_loader_that_cannot_be_sent_to_the_workers(cluster, inputs, tiny_model, tmp_path):
    lock = threading.Lock()
    sentence = refused(
        scenario(inputs, tiny_model, False),
        lambda: lock,
        Cluster(cluster.address),
        tmp_path / "run",
    )
    assert sentence.startswith("The engine loader cannot be sent to the Ray workers (")
    assert "functools.partial(bonito.engines.load_engine" in sentence


def test_a_model_here_but_not_on_the_workers(cluster, inputs, tiny_model, tmp_path, monkeypatch):
    """The driver's home holds the model, the workers' does not."""
    (tmp_path / "tiny").symlink_to(tiny_model)
    monkeypatch.setenv("HOME", str(tmp_path))  # this process's only: the nodes are started
    config = dataclasses.replace(scenario(inputs, tiny_model, False), model="~/tiny")
    sentence = refused(config, Slow("~/tiny"), Cluster(cluster.address), tmp_path / "run")
    assert sentence.startswith("The model ~/tiny is on this machine but not on the Ray node ")


def test_an_engine_that_fails_to_start_is_tried_again_then_one_sentence(
    cluster, inputs, tiny_model, tmp_path
):
    tries = tmp_path / "tries"
    config, folder = scenario(inputs, tiny_model, False), tmp_path / "run"
    with pytest.raises(BonitoError) as error:
        generate_run(folder, config, Broken(str(tries)), cluster=Cluster(cluster.address))
    assert str(error.value).startswith(
        "The engine failed to start on the Ray cluster 3 times in a row, last with: this engine "
        "cannot start — every node needs bonito"
    )
    assert len(tries.read_text().splitlines()) >= 3
    assert not list(sqlite3.connect(folder / "run.sqlite").execute("SELECT * FROM completions"))


def test_a_run_folder_on_a_network_file_system_is_warned_of(tmp_path, caplog):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\n")
    warn_network_folder(tmp_path / "run", str(mounts))
    assert "is on a network file system (nfs4), where SQLite" in caplog.text
    caplog.clear()
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n")
    warn_network_folder(tmp_path / "run", str(mounts))
    assert not caplog.text


@pytest.mark.vllm
def test_vllm_engines_on_the_cluster(cluster, inputs, tiny_model, vllm_bonito, tmp_path):
    """The same run with vLLM as the engine, in one process (the session's vLLM) and in an
    engine actor on the cluster (one: the tests above spread runs over several engines; `make
    test` runs this one in .venv-vllm, which has Ray too)."""
    config = scenario(inputs, tiny_model, False)
    options = {**VLLM_ARGS, "gpu_memory_utilization": 0.3}  # of RAM on vLLM's CPU backend
    load = functools.partial(load_engine, str(tiny_model), "vllm", **options)
    generate_run(tmp_path / "one", config, lambda: vllm_bonito.engine)
    generate_run(tmp_path / "ray", config, load, cluster=Cluster(cluster.address, engines=1))
    assert contents(tmp_path / "ray") == contents(tmp_path / "one")


# Last, as they leave the cluster smaller (and Ray lists a lost node as alive for a while).
@pytest.mark.parametrize("replaced", [True, False], ids=["replaced", "not-replaced"])
def test_worker_node_lost_mid_run(
    cluster, reference, inputs, tiny_model, tmp_path, replaced, caplog
):
    """A worker node killed while its engine works on a block: the block is generated again,
    on a new node or on the one left, and the run is the run of one process."""
    config, folder, ended = scenario(inputs, tiny_model, greedy=False), tmp_path / "run", []

    def run():
        cluster_run = Cluster(cluster.address)
        try:
            ended.append(generate_run(folder, config, Slow(str(tiny_model)), cluster=cluster_run))
        except BaseException as error:
            ended.append(error)

    driver = threading.Thread(target=run)  # the cluster's nodes are added on the main thread
    driver.start()
    try:
        wait_for(lambda: done_requests(folder) >= 3 * BLOCK or ended)
        removed_at = done_requests(folder)
        cluster.remove_node(cluster.list_all_nodes()[1], allow_graceful=False)
        if replaced:
            cluster.add_node(**cluster.node, num_gpus=1)
    finally:
        driver.join()
    [outcome] = ended
    assert removed_at < 96 and outcome.state == "finished"
    assert "An engine was lost" in caplog.text
    assert contents(folder) == contents(reference[False])


@pytest.mark.parametrize(
    ("asked", "gpus", "taken"), [(None, 0, 0.0), (None, 2, 1.0), (0.0, 2, 0.0), (2.0, 4, 2.0)]
)
def test_engines_take_no_gpu_on_a_cluster_without_one(asked, gpus, taken, tmp_path):
    """A laptop's `--ray local` has no GPU: its engines take none, unless told otherwise."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bonito[ray]')")
    engines = RayEngines(Cluster("local", gpus_per_engine=asked), print, None, tmp_path)
    node = {"Alive": True, "Resources": {"CPU": 2.0, "GPU": float(gpus)}}
    engines.ray = SimpleNamespace(nodes=lambda: [node, {**node, "Alive": False}])
    assert engines._gpus_per_engine() == taken
