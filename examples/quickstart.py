"""Train MoPoE on PolyDigits (5 modalities), then impute two modalities from one (about a minute on 2 CPU cores)."""
from mmvae import Modality, MultimodalVAE, Trainer
from mmvae.datasets import PolyDigits
from mmvae.networks import ConvDecoder, ConvEncoder

train, test = PolyDigits(split="train"), PolyDigits(split="test")
D = 16  # shared latent size
model = MultimodalVAE(
    modalities={name: Modality(encoder=ConvEncoder(train.shapes[name], 2 * D),
                               decoder=ConvDecoder(D, train.shapes[name]), likelihood="laplace")
                for name in train.modalities},
    shared_dim=D, private_dim=0,          # private_dim may also be a dict per modality
    aggregator="mopoe",                   # "poe" | "moe" | "mopoe" | "avg" | "none" | "gated" | "lowrank"
    beta=1.0,
)
Trainer(model, max_epochs=5, batch_size=256, device="auto").fit(train, val=test)
x0 = test.data["m0"][:8].to(model.device)                   # [8, 3, 16, 16]
filled = model.impute({"m0": x0}, targets=["m1", "m2"])    # dict name -> tensor
print({name: tuple(t.shape) for name, t in filled.items()})
