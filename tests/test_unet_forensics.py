"""unet_forensics: a state dict that does not fit the network built from the flags is an error naming the
file and the flags its tensor shapes tell (the diffusion UNet and the classifier), else a generic hint."""
import pytest
import torch as th
from cpu_helpers import TINY_CLASSIFIER, TINY_UNET

from guided_diffusion.script_util import create_classifier_and_diffusion, create_model_and_diffusion
from guided_diffusion.unet import UNetModel
from guided_diffusion.unet_forensics import check_state_dict, load_state_dict_into
from guided_diffusion.util import checkpoint as ckpt

TINY = TINY_UNET
CLASSIFIER = TINY_CLASSIFIER


def test_mismatched_flags_name_the_flag(tmp_path):
    model, _ = create_model_and_diffusion(**TINY)
    path = tmp_path / "model000000.pt"
    ckpt.save(model.state_dict(), str(path))
    other, _ = create_model_and_diffusion(**{**TINY, "learn_sigma": False})
    with pytest.raises(ckpt.CheckpointError, match="--learn_sigma"):
        load_state_dict_into(other, str(path))
    other, _ = create_model_and_diffusion(**{**TINY, "dataset": "chexpert"})
    with pytest.raises(ckpt.CheckpointError, match="--dataset"):
        load_state_dict_into(other, str(path))
    other, _ = create_model_and_diffusion(**{**TINY, "class_cond": False})
    with pytest.raises(ckpt.CheckpointError, match="--class_cond"):
        load_state_dict_into(other, str(path))


def _mismatch_message(module, state, path, what="model"):
    with pytest.raises(ckpt.CheckpointError) as caught:
        check_state_dict(module, state, path, what)
    return str(caught.value)


def _with_no_class_row(state):
    """A state dict whose label embedding has a third, "no class" row (classifier-free guidance)."""
    rows = state["label_emb.weight"]
    return {**state, "label_emb.weight": th.cat([rows, th.zeros_like(rows[:1])])}


# TINY is 16 px, --num_channels 32, --num_res_blocks 1, --channel_mult 1,2 (attention "8" is level 1),
# --learn_sigma True, --class_cond True, --use_scale_shift_norm True, --resblock_updown False
@pytest.mark.parametrize("file_flags, flags, expected", [
    ({}, {"num_channels": 64}, "--num_channels 32 (flags say 64)"),
    ({"num_channels": 64}, {}, "--num_channels 64 (flags say 32)"),
    ({}, {"dataset": "chexpert"}, "--dataset brats (flags say chexpert)"),
    ({"dataset": "chexpert"}, {}, "--dataset chexpert (flags say brats)"),
    ({}, {"learn_sigma": False}, "--learn_sigma True (flags say False)"),
    ({"learn_sigma": False}, {}, "--learn_sigma False (flags say True)"),
    ({}, {"class_cond": False}, "--class_cond True (flags say False)"),
    ({"class_cond": False}, {}, "--class_cond False (flags say True)"),
    ({}, {"num_res_blocks": 2}, "--num_res_blocks 1 (flags say 2)"),
    ({"num_res_blocks": 3}, {}, "--num_res_blocks 3 (flags say 1)"),
    ({}, {"attention_resolutions": "16,8"}, "--attention_resolutions 8 (flags say 16,8)"),
    ({"attention_resolutions": "16"}, {}, "--attention_resolutions 16 (flags say 8)"),
    ({}, {"attention_resolutions": ""}, '--attention_resolutions 8 (flags say "")'),
    ({}, {"channel_mult": "1,2,2"}, "--channel_mult 1,2 (flags say 1,2,2)"),
    ({}, {"resblock_updown": True}, "--resblock_updown False (flags say True)"),
    ({}, {"use_scale_shift_norm": False}, "--use_scale_shift_norm True (flags say False)"),
    # several at once, each named (in the order of the reader)
    ({}, {"num_channels": 64, "learn_sigma": False, "num_res_blocks": 3},
     "--num_channels 32 (flags say 64), --learn_sigma True (flags say False), --num_res_blocks 1 (flags say 3)"),
    # the README preset at 256 px: six levels, attention at 16 only in the file
    ({"image_size": 256, "num_channels": 128, "num_res_blocks": 2, "channel_mult": "",
      "attention_resolutions": "16"},
     {"image_size": 256, "num_channels": 128, "num_res_blocks": 2, "channel_mult": "",
      "attention_resolutions": "32,16"},
     "--attention_resolutions 16 (flags say 32,16)"),
])
def test_unet_checkpoint_shapes_name_each_flag(file_flags, flags, expected):
    state = create_model_and_diffusion(**{**TINY, **file_flags})[0].state_dict()
    model = create_model_and_diffusion(**{**TINY, **flags})[0]
    assert _mismatch_message(model, state, "model.pt") == f"model.pt: does not fit the model: made with {expected}"


def test_unet_checkpoint_with_a_no_class_row_names_p_uncond():
    # a label embedding of 3 rows: healthy, diseased and "no class" (trained with labels dropped)
    state = _with_no_class_row(create_model_and_diffusion(**TINY)[0].state_dict())
    model = create_model_and_diffusion(**TINY)[0]
    assert _mismatch_message(model, state, "model.pt") == \
        "model.pt: does not fit the model: made with --p_uncond > 0 (flags say 0)"
    model = create_model_and_diffusion(**{**TINY, "class_cond": False})[0]
    assert _mismatch_message(model, state, "model.pt") == \
        "model.pt: does not fit the model: made with --class_cond True (flags say False), --p_uncond > 0 (flags say 0)"


def test_unet_checkpoint_of_an_unknown_channel_count_says_the_count():
    rgb = UNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                    attention_resolutions=(2,), channel_mult=(1, 2), num_classes=2, use_scale_shift_norm=True)
    model = create_model_and_diffusion(**TINY)[0]
    assert _mismatch_message(model, rgb.state_dict(), "model.pt") == \
        "model.pt: does not fit the model: made with 3 input channels (flags say 4)"


# CLASSIFIER is 16 px, --classifier_width 32, --classifier_depth 1, --classifier_channel_mult 1,2, attention
# "8" (level 1), --classifier_pool attention, --classifier_use_scale_shift_norm True, --classifier_resblock_updown True
@pytest.mark.parametrize("file_flags, flags, expected", [
    ({}, {"classifier_width": 64}, "--classifier_width 32 (flags say 64)"),
    ({}, {"classifier_depth": 2}, "--classifier_depth 1 (flags say 2)"),
    ({"classifier_depth": 3}, {}, "--classifier_depth 3 (flags say 1)"),
    ({}, {"dataset": "chexpert"}, "--dataset brats (flags say chexpert)"),
    ({}, {"classifier_attention_resolutions": "16,8"}, "--classifier_attention_resolutions 8 (flags say 16,8)"),
    ({}, {"classifier_attention_resolutions": ""}, '--classifier_attention_resolutions 8 (flags say "")'),
    ({}, {"classifier_pool": "adaptive"}, "--classifier_pool attention (flags say adaptive)"),
    ({}, {"classifier_pool": "spatial"}, "--classifier_pool attention (flags say spatial)"),
    ({"classifier_pool": "spatial_v2"}, {}, "--classifier_pool spatial_v2 (flags say attention)"),
    ({}, {"classifier_resblock_updown": False}, "--classifier_resblock_updown True (flags say False)"),
    ({}, {"classifier_use_scale_shift_norm": False}, "--classifier_use_scale_shift_norm True (flags say False)"),
    # the attention pool's positional embedding shows the image size; attention "8" of 16 px is level 1,
    # which at 32 px is resolution 16, not a level the flags' "8" gives
    ({}, {"image_size": 32}, '--image_size 16 (flags say 32), --classifier_attention_resolutions 8 (flags say "")'),
    # without an attention pool the image size is unknown: attention levels as fractions of it
    ({"classifier_pool": "adaptive"}, {"classifier_pool": "adaptive", "classifier_attention_resolutions": "16,8"},
     "--classifier_attention_resolutions image_size/2 (flags say image_size/1,image_size/2)"),
    ({}, {"classifier_width": 64, "classifier_depth": 2},
     "--classifier_width 32 (flags say 64), --classifier_depth 1 (flags say 2)"),
])
def test_classifier_checkpoint_shapes_name_each_flag(file_flags, flags, expected):
    state = create_classifier_and_diffusion(**{**CLASSIFIER, **file_flags})[0].state_dict()
    classifier = create_classifier_and_diffusion(**{**CLASSIFIER, **flags})[0]
    assert _mismatch_message(classifier, state, "clf.pt", "classifier") == \
        f"clf.pt: does not fit the classifier: made with {expected}"


def test_checkpoint_of_the_other_network_is_named():
    model = create_model_and_diffusion(**TINY)[0]
    classifier = create_classifier_and_diffusion(**CLASSIFIER)[0]
    assert _mismatch_message(model, classifier.state_dict(), "clf.pt", "diffusion model") == (
        "clf.pt: does not fit the diffusion model: it holds a classifier (an encoder without output blocks): "
        "check --model_path and --classifier_path")
    assert _mismatch_message(classifier, model.state_dict(), "model.pt", "classifier") == (
        "model.pt: does not fit the classifier: it holds a diffusion UNet (it has output blocks): "
        "check --model_path and --classifier_path")


def test_checkpoint_mismatch_falls_back_to_the_generic_hint():
    # a given hint wins over what the shapes say (the baselines pass theirs)
    state = create_model_and_diffusion(**TINY)[0].state_dict()
    model = create_model_and_diffusion(**{**TINY, "num_channels": 64})[0]
    with pytest.raises(ckpt.CheckpointError) as caught:
        check_state_dict(model, state, "model.pt", hint="check --vae_width")
    assert str(caught.value).startswith("model.pt: does not fit the model built from the flags: ")
    assert str(caught.value).endswith("(check --vae_width)")
    # another channel_mult changes the classifier's number of levels: its blocks cannot be read
    # with the flags' levels, so no flag is claimed, and the generic hint lists what differs
    state = create_classifier_and_diffusion(**{**CLASSIFIER, "classifier_channel_mult": "1,2,2"})[0].state_dict()
    classifier = create_classifier_and_diffusion(**CLASSIFIER)[0]
    message = _mismatch_message(classifier, state, "clf.pt", "classifier")
    assert message.startswith("clf.pt: does not fit the classifier built from the flags: ")
    assert "made with" not in message and "(check " in message
    # two levels of depth 2 read as the flags' three levels of depth 1: every block fits, but the widths
    # follow --classifier_channel_mult 1,1,1, not the flags' 1,2,2, so the reading is not trusted (it
    # would claim --image_size 32 from the attention pool)
    state = create_classifier_and_diffusion(**{**CLASSIFIER, "classifier_depth": 2, "classifier_channel_mult": "1,1",
                                               "classifier_attention_resolutions": ""})[0].state_dict()
    classifier = create_classifier_and_diffusion(**{**CLASSIFIER, "classifier_channel_mult": "1,2,2",
                                                    "classifier_attention_resolutions": ""})[0]
    message = _mismatch_message(classifier, state, "clf.pt", "classifier")
    assert message.startswith("clf.pt: does not fit the classifier built from the flags: ")
    # three levels of depth 1 (1,2,2) read as two of depth 2 (1,2): the widths fit, but the block read as
    # the first level's downsampling one widens 32 -> 64, which no downsampling block does
    state = create_classifier_and_diffusion(**{**CLASSIFIER, "classifier_channel_mult": "1,2,2",
                                               "classifier_attention_resolutions": ""})[0].state_dict()
    classifier = create_classifier_and_diffusion(**{**CLASSIFIER, "classifier_depth": 2,
                                                    "classifier_attention_resolutions": ""})[0]
    message = _mismatch_message(classifier, state, "clf.pt", "classifier")
    assert message.startswith("clf.pt: does not fit the classifier built from the flags: ")
    # a network that is neither (a stray key added): the generic hint
    state = create_model_and_diffusion(**TINY)[0].state_dict()
    message = _mismatch_message(create_model_and_diffusion(**TINY)[0], {**state, "extra.weight": th.zeros(1)}, "m.pt")
    assert message == ("m.pt: does not fit the model built from the flags: 1 unexpected keys, e.g. extra.weight "
                       "(check --num_res_blocks / --classifier_depth / --channel_mult / --image_size)")
