"""Lab 2 export: runs INSIDE the student's kernel, as the last cell the grader adds to a graded run.

It calls the student's functions (found by name) on the grader's inputs (``ex.inputs``) and saves what they
return, plus the trained generator, the history, the snapshots and the answers. No answers or checks here.
"""


def export(ex):
    import torch

    from dgmlab.models.gan import Discriminator, GANConfig, Generator

    inp = ex.inputs

    # 1-2. the losses: values, gradients, and very confident logits
    real = inp["real_logits"].clone().requires_grad_(True)
    fake = inp["fake_logits"].clone().requires_grad_(True)
    loss = ex.call("dloss", "discriminator_loss", real, fake)
    if isinstance(loss, torch.Tensor):
        ex.grad("dloss_grad", lambda: loss.sum(), [real, fake])
    ex.call("dloss_extreme", "discriminator_loss", inp["real_extreme"], inp["fake_extreme"])
    fake = inp["fake_logits"].clone().requires_grad_(True)
    loss = ex.call("gloss", "generator_loss", fake)
    if isinstance(loss, torch.Tensor):
        ex.grad("gloss_grad", lambda: loss.sum(), [fake])
    rejected = inp["fake_rejected"].clone().requires_grad_(True)
    loss = ex.call("gloss_rejected", "generator_loss", rejected)
    if isinstance(loss, torch.Tensor):
        ex.grad("gloss_rejected_grad", lambda: loss.sum(), [rejected])

    # 3. the two steps, from the grader's initial weights of a small deterministic GAN
    small = GANConfig(z_dim=8, g_hidden=(32,), d_hidden=(32,), batch_norm=False, dropout=0.0)
    G, D = Generator(small), Discriminator(small)
    G.load_state_dict({k[2:]: v for k, v in inp.items() if k.startswith("G.")})
    D.load_state_dict({k[2:]: v for k, v in inp.items() if k.startswith("D.")})
    opt_D = torch.optim.Adam(D.parameters(), lr=1e-3)
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-3)
    for key, fn, args in (
        ("dstep", "discriminator_step", (G, D, opt_D, inp["x_real"], inp["z"])),
        ("gstep", "generator_step", (G, D, opt_G, inp["z"])),
    ):
        values = []
        for _ in range(5):
            out = ex.call(key, fn, *args, save=False)
            if ex.status(key) != "absent":
                break
            values.append(out.detach().clone() if isinstance(out, torch.Tensor) else out)
        else:
            ex.save(key, values)
        ex.save(key + "_after", {"G": dict(G.state_dict()), "D": dict(D.state_dict())})

    # 4. the trained generator, the history and the snapshots
    ex.save_training_run("G", "trained_G", batch_size=128)  # the training cell's batches

    # 5. interpolation
    ex.call("interp7", "interpolate", inp["z0"], inp["z1"], 7)
    ex.call("interp3", "interpolate", inp["z0"], inp["z1"], steps=3)

    # 6. short answers
    ex.save_answers(("answer_value", "answer_saturation"))
