// The API's shapes, from the generated OpenAPI types, plus the fields of this session's
// contract (notes/CONTRACT3.md) that a service older than the page may not send yet:
// those are optional here, and the page works without them.
import type { components } from "./schema";

type Schemas = components["schemas"];

export type Spec = Schemas["InstanceSpec"];
export type InstanceDoc = Schemas["InstanceDoc"];
export type Operation = Schemas["OperationView"];
export type Step = Schemas["StepView"];
export type ErrorBody = Schemas["ErrorBody"];
export type Cloud = Spec["cloud"];
export type Preview = Schemas["PreviewView"];

export interface OperationSummary {
  id: string;
  kind: string;
  status: string;
  step?: string | null;
}

export interface MetricSample {
  ts: string | number; // as the agent sent it: ISO 8601, or seconds since the epoch
  cpu_percent?: number | null;
  memory_percent?: number | null;
  gpus?: { utilization_percent?: number | null }[];
  [key: string]: unknown;
}

export type Instance = Schemas["InstanceView"] & {
  stack_name?: string;
  stack_command?: string;
  operation?: OperationSummary | null;
  simulated?: boolean;
};

export type Snapshot = Schemas["SnapshotView"] & { disk_gb?: number | null };

export interface InstancePage {
  items: Instance[];
  total: number;
  limit: number;
  next_cursor?: string | null;
}

export interface Features {
  clouds: string[];
  known_clouds?: string[];
  features: { sidebar?: boolean; simulated?: boolean; [key: string]: unknown };
}

export interface CatalogMachineType {
  name: string;
  vcpus?: number;
  memory_gb?: number;
  gpus?: number;
  gpu_type?: string | null;
}

export interface CatalogCloud {
  name: string;
  regions: { name: string; zones: string[] }[];
  machine_types: CatalogMachineType[];
  images: string[];
}

export interface Me {
  user: string;
  role: string;
  expires_at?: string;
}
