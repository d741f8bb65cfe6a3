"""Checkpoint I/O: memory-mapped safetensors, restricted legacy pickles (a malicious one runs
nothing), atomic writes, and load_into's report, errors and no-copy assignment."""
from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch
from torch import nn

from scepter_core.checkpoint import (LoadReport, load_into, load_state_dict, materialize_meta,
                                     save_pickle_checkpoint, save_state_dict)
from scepter_core.errors import CheckpointError


class Exploit:
    """Unpickling this would create the marker file: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.Linear(8, 3))


def test_safetensors_round_trip_is_memory_mapped_views(tmp_path):
    sd = {'a': torch.randn(3, 5), 'b': torch.arange(6, dtype=torch.int64).reshape(2, 3),
          'c': torch.randn(4).to(torch.bfloat16), 'view': torch.randn(6, 6)[:, 1]}  # a strided view too
    path = tmp_path / 'w.safetensors'
    save_state_dict(sd, path, metadata={'step': 3})
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) and loaded[k].dtype == sd[k].dtype
                                          for k in sd)
    # one file mapping shared by every tensor: nothing was copied out of it
    storages = {v.untyped_storage().data_ptr() for v in loaded.values()}
    assert len(storages) == 1 and loaded['a'].untyped_storage().nbytes() == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ['w.safetensors']  # no temporary left behind


def test_truncated_or_garbage_files_are_named(tmp_path):
    path = tmp_path / 'w.safetensors'
    save_state_dict({'a': torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="w.safetensors': truncated"):
        load_state_dict(path)
    (tmp_path / 'junk.safetensors').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='junk.safetensors'):
        load_state_dict(tmp_path / 'junk.safetensors')
    with pytest.raises(CheckpointError, match='not found'):
        load_state_dict(tmp_path / 'missing.ckpt')


def test_save_copies_only_overlapping_tensors(tmp_path, monkeypatch):
    import safetensors.torch
    written: dict[str, torch.Tensor] = {}
    real = safetensors.torch.save_file

    def save_file(tensors, *args, **kwargs):  # the real writer, seeing which buffers it is given
        written.update(tensors)
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, 'save_file', save_file)
    tied, packed = torch.randn(10), torch.randn(10)
    sd = {'all': tied, 'head': tied[:4], 'tail': tied[5:], 'left': packed[:4], 'right': packed[5:]}
    save_state_dict(sd, tmp_path / 'x.safetensors')
    got = load_state_dict(tmp_path / 'x.safetensors')
    assert set(got) == set(sd) and all(torch.equal(got[k], v) for k, v in sd.items())
    # 'all' overlaps both of its views, so one copy of it is enough; the disjoint views of
    # `packed` (and those of `tied`, once 'all' is copied) are written from where they lie
    copied = {k for k, v in sd.items() if written[k].data_ptr() != v.data_ptr()}
    assert copied == {'all'}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / 'w.safetensors'
    save_state_dict({'a': torch.ones(2)}, path)
    with pytest.raises(Exception):
        save_state_dict({'a': torch.ones(2), 'bad': 'not a tensor'}, path)  # type: ignore[dict-item]
    assert torch.equal(load_state_dict(path)['a'], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ['w.safetensors']


def test_legacy_ckpt_loads_weights_and_unwraps_state_dict(tmp_path):
    sd = {'w': torch.randn(2, 2)}
    save_pickle_checkpoint(sd, tmp_path / 'm.ckpt')
    torch.save({'global_step': 5, 'state_dict': sd}, tmp_path / 'lightning.ckpt')
    torch.save(sd, tmp_path / 'plain.pth')
    for name in ('m.ckpt', 'lightning.ckpt', 'plain.pth'):
        assert torch.equal(load_state_dict(tmp_path / name)['w'], sd['w'])


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize('writer', ['torch.save', 'pickle'])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, writer):
    control = tmp_path / 'control'
    pickle.loads(pickle.dumps(Exploit(str(control))))  # an ordinary unpickler runs the payload
    assert control.exists()
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.ckpt'
    payload = {'state_dict': {'w': torch.zeros(1)}, 'x': Exploit(str(marker))}
    if writer == 'torch.save':
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match='evil.ckpt'):
        load_state_dict(path)
    assert not marker.exists()


def test_load_into_reports_and_skips_known_ldm_entries(caplog):
    net = _net()
    sd = {k: v.clone() + 1 for k, v in net.state_dict().items() if k != '2.bias'}
    sd.update({'alphas_cumprod': torch.ones(3), 'model_ema.decay': torch.tensor(0.9), 'stranger.weight': torch.ones(1)})
    with caplog.at_level(logging.INFO):
        report = load_into(net, sd, logger=logging.getLogger('t'))
    assert isinstance(report, LoadReport)
    assert (report.loaded, report.missing, report.unexpected, report.skipped_known) == (5, 1, 1, 2)
    assert report.missing_names == ['2.bias'] and report.unexpected_names == ['stranger.weight']
    assert '1 missing' in caplog.text
    with pytest.raises(CheckpointError, match='1 missing, 1 unexpected'):
        load_into(_net(), sd, strict=True)


def test_shape_mismatch_names_key_and_both_shapes():
    sd = dict(_net().state_dict())
    sd['0.weight'] = torch.zeros(8, 5)
    with pytest.raises(CheckpointError, match=r"'0\.weight' has shape \(8, 5\) in the checkpoint but \(8, 4\)"):
        load_into(_net(), sd)


def test_copy_keeps_parameter_objects_and_assign_reuses_tensors():
    net = _net()
    params = list(net.parameters())
    sd = {k: torch.randn(v.shape) for k, v in net.state_dict().items()}
    load_into(net, sd)  # default: in place, so an optimizer holding the parameters keeps working
    assert all(a is b for a, b in zip(params, net.parameters()))
    assert torch.equal(net[0].weight, sd['0.weight'])
    load_into(net, sd, assign=True)
    assert net[0].weight.data_ptr() == sd['0.weight'].data_ptr()  # no copy
    with torch.device('meta'):
        meta_net = _net()
    half = {k: v.half() for k, v in sd.items()}
    load_into(meta_net, half)  # meta parameters are always assigned, cast to the module's dtype
    assert meta_net[0].weight.dtype == torch.float32 and torch.equal(meta_net[0].weight, half['0.weight'].float())


def test_ignore_keys_and_meta_leftovers_are_initialised():
    with torch.device('meta'):
        net = _net()
    sd = {k: torch.full(v.shape, 2.0) for k, v in _net().state_dict().items()}
    report = load_into(net, sd, ignore_keys=['2.', r'^0\.bias$'])
    assert report.ignored == 3 and report.missing == 3
    assert not any(p.is_meta for p in net.parameters())
    assert torch.all(net[2].weight != 2) and torch.all(net[0].bias != 2)  # initialised afresh
    assert torch.all(net[0].weight == 2) and torch.all(net[1].weight == 2)  # loaded, kept beside a fresh bias
    assert materialize_meta(net) == []


def test_checkpoint_directories_use_the_one_writer(tmp_path):
    """A training checkpoint's weights go through save_state_dict too: tied and strided
    tensors are written whole, the metadata kept, the directory renamed into place."""
    from scepter_core.checkpoint import read_safetensors_header
    from scepter_core.solvers.state import write_checkpoint
    w = torch.randn(3, 4)
    weights = {'a.weight': w, 'tied.weight': w, 'strided': w.t()}
    step = write_checkpoint(tmp_path, 7, weights, {'step': 7}, 'SOLVER: {}\n', metadata={'extra': 'x'})
    assert step.name == 'step-000007' and (tmp_path / 'latest').read_text().strip() == step.name
    got = load_state_dict(step / 'model.safetensors')
    assert all(torch.equal(got[k], v) for k, v in weights.items()) and got['strided'].shape == (4, 3)
    meta = read_safetensors_header(step / 'model.safetensors')[0]['__metadata__']
    assert meta == {'format': 'scepter', 'step': '7', 'extra': 'x'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['latest', 'step-000007']  # no temporaries left
