"""Metrics of the VM-UNet evaluation protocols."""

from vmunet_monai.metrics.isic import ISIC_METRIC_NAMES, ISICMetric, confusion_counts, isic_scores
from vmunet_monai.metrics.synapse import organ_metrics, summarize_organ_metrics, summary_table_markdown
