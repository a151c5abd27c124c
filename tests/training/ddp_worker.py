"""Run by ``torchrun`` from test_ddp.py: train a tiny model, then save this rank's final weights."""

import sys

import torch

from mambakit.training import TrainConfig, Trainer

MODEL = {"d_model": 16, "n_layer": 1, "d_state": 4}


def config(corpus: str) -> TrainConfig:
    return TrainConfig(data=corpus, seq_len=16, batch_size=4, steps=4, warmup_steps=1, eval_every=2,
                       eval_windows=4, ckpt_every=2, device="cpu", threads=1, progress="none")


if __name__ == "__main__":
    corpus, run_dir, weights_out = sys.argv[1:4]
    trainer = Trainer(MODEL, config(corpus), run_dir, log=lambda message: None)
    trainer.run()
    torch.save(trainer.model.state_dict(), weights_out.format(rank=trainer.info.rank))
