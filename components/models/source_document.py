"""The generator exactly as printed in the source document, kept to document its shape bug.

Its encoder convolutions have no padding, so 64x64 -> 31 -> 14 -> 6, and the decoder brings 6 back to
only 14 -> 28 -> 56: the output (56x56) is smaller than the input (64x64), so MSE(G(x), x) cannot even be
computed. `components.models.generator.Generator` fixes this with padding=1 on every 4x4 stride-2 layer.
"""
import torch.nn as nn


class SourceDocumentGenerator(nn.Module):
    """Verbatim architecture from the article (with `in_channels` made a parameter)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=(4, 4), stride=(2, 2)), nn.ReLU(),
            nn.Conv2d(64, 128, kernel_size=(4, 4), stride=(2, 2)), nn.ReLU(),
            nn.Conv2d(128, 256, kernel_size=(4, 4), stride=(2, 2)), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(256, 128, kernel_size=(4, 4), stride=(2, 2)), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, kernel_size=(4, 4), stride=(2, 2), padding=(1, 1)), nn.ReLU(),
            nn.ConvTranspose2d(64, in_channels, kernel_size=(4, 4), stride=(2, 2), padding=(1, 1)),
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))
