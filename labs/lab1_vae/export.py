"""Lab 1 export: runs INSIDE the student's kernel, as the last cell the grader adds to a graded run.

It only calls the student's functions (found by name) on the inputs the grader chose (``ex.inputs``) and saves
what they return, plus the trained model's weights, the training history and the answers. It holds no answers
and no checks: those stay in ``checks.py``, in the grader's process.
"""


def export(ex):
    import torch

    from dgmlab.models.vae import VAE, VAEConfig

    inp = ex.inputs

    # 1. reparameterize: many draws for statistics, then gradients of a weighted sum
    mu = inp["reparam_mu"].clone().requires_grad_(True)
    logvar = inp["reparam_logvar"].clone().requires_grad_(True)
    z = ex.call("reparam", "reparameterize", mu, logvar, seed=0)
    if isinstance(z, torch.Tensor):
        ex.grad("reparam_grad", lambda: (z * inp["reparam_w"]).sum(), [mu, logvar])

    # 2. kl_divergence: values and gradients
    mu = inp["kl_mu"].clone().requires_grad_(True)
    logvar = inp["kl_logvar"].clone().requires_grad_(True)
    kl = ex.call("kl", "kl_divergence", mu, logvar)
    if isinstance(kl, torch.Tensor):
        ex.grad("kl_grad", lambda: kl.sum(), [mu, logvar])

    # 3. negative_elbo: values, gradient w.r.t. the logits, and very confident logits
    logits = inp["elbo_logits"].clone().requires_grad_(True)
    args = (inp["elbo_mu"], inp["elbo_logvar"])
    loss = ex.call("elbo", "negative_elbo", inp["elbo_x"], logits, *args)
    if isinstance(loss, torch.Tensor):
        ex.grad("elbo_grad", lambda: loss.sum(), [logits])
    ex.call("elbo_extreme", "negative_elbo", inp["elbo_x"], inp["elbo_logits_extreme"], *args)

    # 4. train_step: ten steps from the grader's initial weights on one batch
    step_model = VAE(VAEConfig(z_dim=2, hidden_dims=(64,)))
    step_model.load_state_dict({k[len("step_init.") :]: v for k, v in inp.items() if k.startswith("step_init.")})
    opt = torch.optim.Adam(step_model.parameters(), lr=1e-2)
    losses = []
    for i in range(10):
        out = ex.call("step_loss", "train_step", step_model, opt, inp["step_x"], seed=100 + i, save=False)
        if ex.status("step_loss") != "absent":  # an error or a missing function was recorded
            break
        losses.append(out.detach().clone() if isinstance(out, torch.Tensor) else out)
    else:
        ex.save("step_loss", losses)
    ex.save("step_final", {k: v.detach().clone() for k, v in step_model.state_dict().items()})

    # 5. the trained model, its history and the snapshots (produced by the notebook's training cell)
    ex.save_training_run("model", "trained_state", batch_size=128)  # the training cell's batches

    # 6. manifold_grid with a probe decoder: each latent point decodes to its own pattern
    calls = []

    def probe(z):
        z = torch.as_tensor(z).detach().to(torch.float32).reshape(-1, 2)
        calls.append(z.clone())
        return torch.sigmoid(z @ inp["probe_W"].T + inp["probe_b"])  # [m, 784]

    ex.call("manifold", "manifold_grid", probe, 5)
    ex.save("manifold_calls", torch.cat(calls) if calls else torch.zeros(0, 2))

    # 7. short answers (plain numbers or strings only)
    ex.save_answers(("answer_kl", "answer_gap", "answer_mc"))
