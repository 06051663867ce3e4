"""Zero-shot scoring: one encode per volume and per prompt, softmax over each pair, templates."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ablations.prompts import build_prompts, get_template
from ablations.zeroshot import zero_shot
from models import SIZES, Variant, build, example_batch

SIZE = SIZES["tiny"]
CLASSES = ["Pleural effusion", "Cardiomegaly", "Emphysema"]


def test_templates():
    assert build_prompts(CLASSES[:1]) == ["Pleural effusion is present.", "Pleural effusion is not present."]
    assert build_prompts(CLASSES[:1], "there-is") == ["There is pleural effusion.", "There is no pleural effusion."]
    with pytest.raises(ValueError, match="valid templates"):
        get_template("nope")


def test_each_volume_and_prompt_encoded_once_and_pairs_softmaxed():
    from models.text import load_tokenizer, tokenize

    torch.manual_seed(0)
    model = build(Variant.faithful(), SIZE)
    volumes, _, _ = example_batch(SIZE, 5, seed=2)
    data = [SimpleNamespace(volume=volumes[i], labels=torch.tensor([i % 2, 1, 0]), name=f"valid_{i}_a_1")
            for i in range(5)]
    calls = {"image": 0, "text": 0, "volumes": 0, "prompts": 0}
    enc_img, enc_txt = model.encode_image, model.encode_text

    def count_image(v):
        calls["image"] += 1
        calls["volumes"] += len(v)
        return enc_img(v)

    def count_text(ids, mask):
        calls["text"] += 1
        calls["prompts"] += len(ids)
        return enc_txt(ids, mask)

    model.encode_image, model.encode_text = count_image, count_text
    tokenizer = load_tokenizer()
    tok = lambda t: tokenize(tokenizer, t, SIZE.text_max_len)  # noqa: E731
    scores = zero_shot(model, data, tok, CLASSES, "present", batch=2)
    assert calls == {"image": 3, "text": 1, "volumes": 5, "prompts": 6}
    assert scores.probabilities.shape == (5, 3) and scores.names[0] == "valid_0_a_1"
    assert model.training  # evaluation restores the mode it found
    # Independent recomputation: P(present) = sigmoid(logit_pos - logit_neg) for every pair.
    model.eval()
    with torch.no_grad():
        ids, mask = tok(build_prompts(CLASSES))
        t, i = enc_txt(ids, mask), enc_img(volumes)
        logits = (model.temperature.exp() * t @ i.t()).numpy()  # (6, 5)
    expected = 1 / (1 + np.exp(-(logits[0::2] - logits[1::2]))).T
    np.testing.assert_allclose(scores.probabilities, expected, rtol=1e-5, atol=1e-6)
