"""mambakit info: config, parameter count, memory and the last validation loss."""



from mambakit.cli import main
from mambakit.models import MambaLMHeadModel
from mambakit.training import latest_checkpoint


def test_info_reports_config_parameters_and_memory(capsys, trained_run):
    assert main(["info", str(trained_run)]) == 0
    out = capsys.readouterr().out
    model = MambaLMHeadModel.from_pretrained(latest_checkpoint(trained_run))
    n_params = sum(p.numel() for p in model.parameters())
    assert f"parameters: {n_params:,}" in out
    assert '"d_model": 16' in out and "recurrent state per sequence" in out
    assert "last validation loss" in out
