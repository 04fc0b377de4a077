import pytest
import torch

from karmma.errors import ConfigError, DataError
from karmma.modalities import ModalitySpec, all_subsets, check_mask, parse_subset, subset_index, subset_mask


def test_all_subsets_three_modalities_gives_seven():
    subs = all_subsets(["rgb", "flow", "audio"])
    assert len(subs) == 7
    assert subs[0] == ("rgb",) and subs[-1] == ("rgb", "flow", "audio")


def test_empty_modality_list_is_refused():
    with pytest.raises(ConfigError):
        all_subsets([])


def test_parse_subset_orders_and_validates():
    assert parse_subset("audio+rgb", ["rgb", "flow", "audio"]) == ("rgb", "audio")
    with pytest.raises(ConfigError, match="unknown modality"):
        parse_subset("depth", ["rgb"])
    with pytest.raises(ConfigError, match="empty"):
        parse_subset("", ["rgb"])


def test_subset_index_is_a_bijection_over_nonempty_subsets():
    names = ["a", "b", "c"]
    codes = {int(subset_index(subset_mask(s, names, 1))[0]) for s in all_subsets(names)}
    assert codes == set(range(7))


def test_check_mask_names_empty_samples():
    with pytest.raises(DataError, match="x2"):
        check_mask(torch.tensor([[True, False], [False, False]]), ["x1", "x2"])


def test_bad_spec():
    with pytest.raises(ConfigError):
        ModalitySpec("rgb", 0, 3)
