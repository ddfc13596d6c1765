"""Shared fixtures: ``isa`` runs a test once per ISA path this machine supports."""
import pytest

from fastcells import _kernels


@pytest.fixture(params=_kernels.isa_available())
def isa(request):
    """The ISA path under test, installed for the test and the previous one restored."""
    before = _kernels.get_isa()
    _kernels.set_isa(request.param)
    yield request.param
    _kernels.set_isa(before)
