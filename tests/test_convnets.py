"""Without gradients the ready-made convnets run channels-last, with the decoder's last layer as a sub-pixel conv
(faster CPU kernels), on the parameters of their nn.Sequential: the outputs equal the plain layers', and training
(with gradients) runs the plain layers themselves."""
import pytest
import torch

from mmvae.networks import ConvDecoder, ConvEncoder


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 28, 28), (2, 12, 20)])
def test_inference_equals_the_plain_layers_and_training_runs_them(shape):
    torch.manual_seed(0)
    dec, enc = ConvDecoder(6, shape), ConvEncoder(shape, 10)
    for net, inp in ((dec, torch.randn(5, 6)), (enc, torch.rand(5, *shape))):
        with torch.no_grad():
            fast, ref = net(inp), net.net(inp)
        assert fast.shape == ref.shape and fast.is_contiguous()
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(net(inp), net.net(inp))  # with gradients: the same layers, the same bits
        with torch.inference_mode():
            torch.testing.assert_close(net(inp), ref, rtol=1e-5, atol=1e-6)


def test_the_parameters_keep_the_sequential_names_so_old_checkpoints_load():
    torch.manual_seed(1)
    dec = ConvDecoder(4, (3, 8, 8))
    other = ConvDecoder(4, (3, 8, 8))
    other.load_state_dict(dec.state_dict())
    assert list(dec.state_dict()) == [f"net.{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias", "5.weight",
                                                           "5.bias", "7.weight", "7.bias")]
    z = torch.randn(3, 4)
    torch.testing.assert_close(other(z), dec.net(z), rtol=1e-5, atol=1e-6)

