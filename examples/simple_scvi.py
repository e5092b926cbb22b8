"""A simple scVI written against scprob's module API (the seed tutorial's "MyModule"),
trained with scprob's own trainer, in both backends.

    z ~ N(0, I);  rho = softmax(f(z));  x_g ~ NB(l * rho_g, theta_g),  l = sum_g x_g
    q(z | x) = N(m(log1p x), v(log1p x))

Corrected from the tutorial: the Pyro guide takes the model's arguments ``(x, library)``
(the tutorial's guide took ``log_library`` and used an undefined ``z_scale``: here the
scale is ``sqrt(v)``), and the PyTorch loss builds the NB from ``log_mu`` and ``theta``
(the tutorial called ``NegativeBinomial(total_counts=..., total=...)``, arguments that do
not exist).  No ``pyro.module`` or ``pyro.clear_param_store()``: the plan optimizes the
module's parameters directly, and each model keeps its own Pyro param store.

Run: python examples/simple_scvi.py   (trains both on the shipped mixology data)
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from scprob.data import Keys
from scprob.distributions import NegativeBinomial
from scprob.models import BaseModel
from scprob.modules import BaseModule, LossOutput, PyroBaseModule
from scprob.train import PyroTrainingPlan


def mlp(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, 128), nn.ReLU(), nn.Linear(128, n_out))


class MyModule(BaseModule):
    """Plain-PyTorch backend: we write the ELBO ourselves."""

    def __init__(self, n_input: int, n_latent: int = 10):
        super().__init__()
        self.decoder, self.log_theta = mlp(n_latent, n_input), nn.Parameter(torch.randn(n_input))
        self.mean_encoder, self.var_encoder = mlp(n_input, n_latent), mlp(n_input, n_latent)

    def _get_inference_input(self, tensors):
        return dict(x=tensors[Keys.X])

    def inference(self, x):
        x_ = torch.log1p(x)
        qz = Normal(self.mean_encoder(x_), self.var_encoder(x_).exp().sqrt() + 1e-4)
        return dict(qz=qz, z=qz.rsample())

    def _get_generative_input(self, tensors, inference_outputs):
        return dict(z=inference_outputs["z"], library=tensors[Keys.X].sum(1, keepdim=True))

    def generative(self, z, library):
        log_mu = torch.log(library) + torch.log_softmax(self.decoder(z), -1)
        return dict(px=NegativeBinomial(log_mu=log_mu, theta=self.log_theta.exp()))

    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight: float = 1.0):
        rec = -generative_outputs["px"].log_prob(tensors[Keys.X]).sum(-1)
        qz = inference_outputs["qz"]
        kl = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), 1.0)).sum(-1)
        return LossOutput(loss=(rec + kl_weight * kl).mean(), reconstruction_loss=rec, kl_local=kl)


class MyPyroModule(PyroBaseModule):
    """Pyro backend: model + guide; SVI derives the ELBO."""

    def __init__(self, n_input: int, n_latent: int = 10):
        super().__init__()
        self.n_latent = n_latent
        self.decoder, self.log_theta = mlp(n_latent, n_input), nn.Parameter(torch.randn(n_input))
        self.mean_encoder, self.var_encoder = mlp(n_input, n_latent), mlp(n_input, n_latent)

    @staticmethod
    def _get_fn_args_from_batch(tensors):
        x = tensors[Keys.X]
        return (x, x.sum(1, keepdim=True)), {}

    def model(self, x, library):
        with pyro.plate("cells", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.n_latent), 1.0).to_event(1))
            mu = library * torch.softmax(self.decoder(z), -1)
            theta = self.log_theta.exp()
            pyro.sample("obs", dist.NegativeBinomial(total_count=theta, logits=mu.log() - theta.log()).to_event(1), obs=x)

    def guide(self, x, library):
        with pyro.plate("cells", x.shape[0]):
            x_ = torch.log1p(x)
            scale = self.var_encoder(x_).exp().sqrt() + 1e-4
            pyro.sample("z", dist.Normal(self.mean_encoder(x_), scale).to_event(1))

    def inference(self, x):  # used by get_latent_representation
        x_ = torch.log1p(x)
        return dict(qz=Normal(self.mean_encoder(x_), self.var_encoder(x_).exp().sqrt() + 1e-4))

    def _get_inference_input(self, tensors):
        return dict(x=tensors[Keys.X])


class MyModel(BaseModel):
    """The user-facing wrapper: setup_anndata, train, get_latent_representation, save/load."""

    def __init__(self, adata, n_latent: int = 10, backend: str = "torch"):
        super().__init__(adata)
        self.init_params = dict(n_latent=n_latent, backend=backend)
        cls = MyPyroModule if backend == "pyro" else MyModule
        self.module = cls(self.registry["n_vars"], n_latent)
        if backend == "pyro":
            self._plan_cls = PyroTrainingPlan


if __name__ == "__main__":
    import scprob
    from scprob.metrics import integration_metrics

    adata = scprob.data.load_mixology()
    MyModel.setup_anndata(adata, batch_key="protocol")
    for backend in ("torch", "pyro"):
        model = MyModel(adata, backend=backend)
        model.train(max_epochs=100, enable_progress_bar=False)
        print(backend, integration_metrics(model.get_latent_representation(), adata.obs.protocol, adata.obs.cell_line))
