"""The engines' own metrics: parsed into load (by their replica), relabelled
and merged for /metrics/engines (by the gateway)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serving.engine_link.engine_metrics import parse_engine_metrics
from serving.upstream.engine_metrics import relabel_engine_metrics


def test_engine_metrics_are_merged_and_labelled_by_replica() -> None:
    text = (
        "# HELP vllm:num_requests_running Running.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        "# HELP vllm:generation_tokens_total Generated.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="m"} 40.0\n'
    )
    other = text.replace(" 2.0", " 5.0").replace(" 40.0", " 7.0")
    rendered = relabel_engine_metrics({"r0": text, "r1": other}).decode()
    assert rendered.count("# TYPE vllm:num_requests_running gauge") == 1
    samples = {
        (s.name, s.labels["replica"]): s.value
        for family in text_string_to_metric_families(rendered)
        for s in family.samples
    }
    assert samples[("vllm:num_requests_running", "r0")] == 2.0
    assert samples[("vllm:num_requests_running", "r1")] == 5.0
    assert samples[("vllm:generation_tokens_total", "r1")] == 7.0
    stats = parse_engine_metrics(other)
    assert stats.running == 5.0
    # A replica whose text cannot be parsed is left out, not the whole answer.
    partial = relabel_engine_metrics({"r0": text, "bad": "vllm:x{ 1\n"}).decode()
    assert 'replica="r0"' in partial and 'replica="bad"' not in partial


def test_the_engines_active_adapters_are_its_newest_lora_series() -> None:
    from serving.engine_link.engine_metrics import parse_engine_metrics

    page = "\n".join(
        [
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",'
            'waiting_lora_adapters=""} 1.7e9',
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="payments-v1,search-v1",'
            'waiting_lora_adapters="infra-v2"} 1.8e9',
            'vllm:num_requests_running{engine="0"} 3.0',
        ]
    )
    load = parse_engine_metrics(page)
    assert load.active_adapters == ("payments-v1", "search-v1", "infra-v2")
    assert load.running == 3.0
    assert parse_engine_metrics('vllm:num_requests_running{engine="0"} 1.0').active_adapters == ()
