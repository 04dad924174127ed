"""Submitted as a Ray job by tests/e2e/test_cluster.py: a Ray Train run of two workers, one per node
(STRICT_SPREAD), each reading one epoch of a dataset with schemas.read_samples through a DataLoader
of two worker processes. Rank 0 writes what every rank read, `[{rank, node, keys}, ...]`, as JSON to
the second argument (Ray Train keeps a report's metrics only with a checkpoint).

    python tests/e2e/read_epoch.py s3://bucket/dip/dip s3://bucket/epoch.json
"""
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def read_one_epoch(config: dict) -> None:
    import ray
    import ray.train
    import torch.distributed as dist
    import torch.utils.data

    from schemas import read_samples

    ctx = ray.train.get_context()
    loader = torch.utils.data.DataLoader(read_samples(config["uri"], decode=False), batch_size=None, num_workers=2)
    mine = {"rank": ctx.get_world_rank(), "node": ray.get_runtime_context().get_node_id(),
            "keys": [s["key"] for s in loader]}
    every = [None] * ctx.get_world_size()
    dist.all_gather_object(every, mine)
    if ctx.get_world_rank() == 0:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(config["result"])
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(every).encode())


def main(uri: str, result: str) -> None:
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(read_one_epoch, train_loop_config={"uri": uri, "result": result},
                 scaling_config=ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD")).fit()


if __name__ == "__main__":
    main(*sys.argv[1:3])
