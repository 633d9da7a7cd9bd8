"""Train SAM itself for promptable segmentation (`python -m jaxvrp.sam.train`).

    python -m jaxvrp.sam.train --config configs/sam.py --workdir /tmp/sam_tiny
    python -m jaxvrp.sam.train --config configs/sam.py:finetune --workdir /tmp/ft \
        --config.init_checkpoint=ckpt/sam_vit_b --config.data.source=pascal5i

`arg`: empty = train the small "tiny_128" SAM from scratch on generated procedural images
(the recipe of the embedded model, `jaxvrp/assets/sam_tiny_128`); "finetune" = the SAM
paper's optimiser settings with a lower rate and only the mask decoder trained, for a
converted SAM (`init_checkpoint`); "runlocal" = a few steps at batch 2 (tests).
Loss and prompt simulation: `jaxvrp.sam.training` (SAM paper, Appendix A).
"""

import ml_collections


def get_config(arg: str | None = None):
    flags = set(filter(None, (arg or "").split(",")))
    unknown = flags - {"finetune", "runlocal"}
    if unknown:
        raise ValueError(f"unknown configs/sam.py args {sorted(unknown)}: finetune, runlocal")
    c = ml_collections.ConfigDict()
    c.sam = "tiny_128"  # jaxvrp.sam.config variant (ignored with init_checkpoint)
    c.init_checkpoint = ""  # a jaxvrp SAM checkpoint (conversion.sam) to fine-tune
    c.seed = 0
    c.distributed = False
    c.coordinator_address = ""
    c.num_processes = 0
    c.process_id = -1

    c.train = ml_collections.ConfigDict()  # jaxvrp.sam.training.TrainConfig
    c.train.focal_weight = 20.0  # SAM paper: focal : dice = 20 : 1
    c.train.dice_weight = 1.0
    c.train.iou_weight = 1.0  # SAM paper: IoU MSE added with weight 1
    c.train.focal_alpha = 0.25
    c.train.focal_gamma = 2.0
    c.train.box_noise = 0.1  # SAM paper: std 10 % of the box side ...
    c.train.box_noise_max = 20.0 / 1024  # ... at most 20 px at 1024
    c.train.correction_rounds = 2  # SAM paper: 8 points + 2 mask-only rounds (GPU budget)
    c.train.trainable = "image_encoder,prompt_encoder,mask_decoder"

    c.data = ml_collections.ConfigDict()
    c.data.source = "procedural"  # or a TFDS build: pascal5i, coco20i, fss1000, perseg, ...
    c.data.seed = 1  # != the benchmark builds' seed 0
    c.data.image_size = 128  # side of the generated procedural images
    c.data.split = "train"  # of a TFDS source
    c.data.data_dir = ""
    c.data.manual_dir = ""
    c.data.procedural_config = "default"  # only for source procedural_fss

    c.batch_size = 16
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 8e-4  # SAM paper (AdamW, beta (0.9, 0.999), weight decay 0.1)
    c.optimizer.weight_decay = 0.1
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
    c.optimizer.warmup_steps = 250  # SAM paper: linear warm-up of 250 iterations
    c.optimizer.grad_clip = 1.0
    c.total_steps = 3000  # then cosine decay to 0 (SAM: step decay; cosine for short runs)
    c.stop_after = 0
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.num_images = 500  # held-out procedural test images (seed 0: the benchmark's)
    c.eval.seed = 0
    c.eval.batch_size = 25

    if "finetune" in flags:
        c.optimizer.lr = 1e-5
        c.optimizer.warmup_steps = 100
        c.train.trainable = "mask_decoder"
        c.total_steps = 2000
        c.batch_size = 8
    if "runlocal" in flags:
        c.train.correction_rounds = 1  # the rounds' code path, at half the compile time
        c.batch_size = 2
        c.total_steps = 3
        c.optimizer.warmup_steps = 1
        c.log_every = 1
        c.checkpoint_every = 2
        c.eval.num_images = 4
        c.eval.batch_size = 2
        c.data.image_size = 64
    c.lock()
    return c


def sweep_correction_rounds(add):
    """The SAM paper's interactive training: 0, 1, 2 or 4 error-point rounds per image."""
    for rounds in (0, 1, 2, 4):
        add(**{"train.correction_rounds": rounds})


def sweep_trainable(add):
    """What fine-tuning a converted SAM updates: the decoder alone, or with the prompts."""
    for trainable in ("mask_decoder", "prompt_encoder,mask_decoder"):
        add(**{"train.trainable": trainable})
