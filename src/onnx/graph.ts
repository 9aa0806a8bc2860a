// A thin builder over the ONNX protobuf definitions (onnx-proto): every graph this project
// writes — the preview decoder, the postprocess wrapper, converted VAE decoders — goes through it,
// so node naming, initializer encoding and opset handling live in one place.
import onnxProto from 'onnx-proto';

export const { onnx } = onnxProto;
export type ModelProto = onnxProto.onnx.ModelProto;
export type NodeProto = onnxProto.onnx.INodeProto;

export const DataType = onnx.TensorProto.DataType;
export type DataType = onnxProto.onnx.TensorProto.DataType;
export type ElemType = 'float32' | 'float16' | 'uint8' | 'int64' | 'int32';

const ELEM: Record<ElemType, number> = {
  float32: DataType.FLOAT,
  float16: DataType.FLOAT16,
  uint8: DataType.UINT8,
  int64: DataType.INT64,
  int32: DataType.INT32,
};

export const DEFAULT_OPSET = 17;
const IR_VERSION = 8; // the IR version that goes with opset 17

type AttrValue =
  | { kind: 'f'; v: number }
  | { kind: 'i'; v: number }
  | { kind: 'ints'; v: number[] }
  | { kind: 'floats'; v: number[] }
  | { kind: 's'; v: string }
  | { kind: 't'; v: onnxProto.onnx.ITensorProto };

export const attr = {
  f: (v: number): AttrValue => ({ kind: 'f', v }),
  i: (v: number): AttrValue => ({ kind: 'i', v }),
  ints: (v: number[]): AttrValue => ({ kind: 'ints', v }),
  floats: (v: number[]): AttrValue => ({ kind: 'floats', v }),
  s: (v: string): AttrValue => ({ kind: 's', v }),
  t: (v: onnxProto.onnx.ITensorProto): AttrValue => ({ kind: 't', v }),
};

function toAttribute(name: string, a: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'f': return { name, type: T.FLOAT, f: a.v };
    case 'i': return { name, type: T.INT, i: a.v };
    case 'ints': return { name, type: T.INTS, ints: a.v };
    case 'floats': return { name, type: T.FLOATS, floats: a.v };
    case 's': return { name, type: T.STRING, s: Buffer.from(a.v, 'utf8') };
    case 't': return { name, type: T.TENSOR, t: a.v };
  }
}

export type TensorData = Float32Array | Uint16Array | Uint8Array | BigInt64Array | Int32Array;

/** A TensorProto holding `data` as raw little-endian bytes (Uint16Array carries float16 bits). */
export function tensor(name: string, type: ElemType, dims: number[], data: TensorData): onnxProto.onnx.ITensorProto {
  return {
    name,
    dataType: ELEM[type],
    dims,
    rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

function valueInfo(name: string, type: ElemType, dims: (number | string)[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: ELEM[type],
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

export class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private counter = 0;

  constructor(readonly name: string, private readonly prefix = '') {}

  input(name: string, type: ElemType, dims: (number | string)[]): string {
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  output(name: string, type: ElemType, dims: (number | string)[]): string {
    this.outputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** Adds a constant; returns its name. */
  constant(name: string, type: ElemType, dims: number[], data: TensorData): string {
    const full = `${this.prefix}${name}`;
    this.initializers.push(tensor(full, type, dims, data));
    return full;
  }

  scalar(name: string, value: number): string {
    return this.constant(name, 'float32', [], new Float32Array([value]));
  }

  ints(name: string, values: number[]): string {
    return this.constant(name, 'int64', [values.length], BigInt64Array.from(values.map(BigInt)));
  }

  /** Adds one node; returns the name of its first output (or `out` when given). */
  node(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, out?: string): string {
    const id = this.counter++;
    const output = out ?? `${this.prefix}${op.toLowerCase()}_${id}`;
    this.nodes.push({
      opType: op,
      name: `${this.prefix}${op}_${id}`,
      input: inputs,
      output: [output],
      attribute: Object.entries(attrs).map(([k, v]) => toAttribute(k, v)),
    });
    return output;
  }

  model(opts: { producer?: string; doc?: string; metadata?: Record<string, string>; opset?: number } = {}): ModelProto {
    return onnx.ModelProto.create({
      irVersion: IR_VERSION,
      producerName: opts.producer ?? 'latent-decoder',
      docString: opts.doc ?? '',
      opsetImport: [{ domain: '', version: opts.opset ?? DEFAULT_OPSET }],
      metadataProps: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
  }
}

export function encodeModel(model: ModelProto): Uint8Array {
  return onnx.ModelProto.encode(model).finish();
}

export function decodeModel(bytes: Uint8Array): ModelProto {
  return onnx.ModelProto.decode(bytes);
}

export function elemTypeName(code: number): string {
  return (DataType as unknown as Record<number, string>)[code] ?? `type ${code}`;
}

/** An initializer whose bytes are produced only when the model file is written. */
export interface LazyTensor {
  name: string;
  type: ElemType;
  dims: number[];
  load(): Promise<TensorData>;
}

const ELEM_BYTES: Record<ElemType, number> = { float32: 4, float16: 2, uint8: 1, int64: 8, int32: 4 };
// Field tags (field number << 3 | wire type 2): ModelProto.graph = 7, GraphProto.initializer = 5,
// TensorProto.raw_data = 9.
const TAG_MODEL_GRAPH = 0x3a;
const TAG_GRAPH_INITIALIZER = 0x2a;
const TAG_TENSOR_RAW_DATA = 0x4a;
const PROTOBUF_LIMIT = 2 ** 31 - 1; // a single protobuf message cannot exceed 2 GiB

function varint(n: number): Buffer {
  const bytes: number[] = [];
  while (n >= 0x80) {
    bytes.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  bytes.push(n);
  return Buffer.from(bytes);
}

/**
 * Writes `model` plus `lazy` initializers to `path`, loading and writing one initializer at a
 * time: protobuf lets repeated fields be appended after the rest of a message, so only the
 * lengths must be known up front, and they follow from the dims. Peak memory is the graph
 * structure plus the largest tensor, not the whole model. Returns the file size.
 */
export async function writeModelFile(
  path: string,
  model: ModelProto,
  lazy: LazyTensor[],
  onTensor?: (done: number, total: number) => void,
): Promise<number> {
  const { open } = await import('node:fs/promises');
  const head = onnx.ModelProto.encode({ ...model, graph: null }).finish();
  const graphHead = onnx.GraphProto.encode(model.graph ?? {}).finish();
  const entries = lazy.map((t) => {
    const meta = onnx.TensorProto.encode({ name: t.name, dataType: ELEM[t.type], dims: t.dims }).finish();
    const rawLen = t.dims.reduce((a, d) => a * d, 1) * ELEM_BYTES[t.type];
    const bodyLen = meta.length + 1 + varint(rawLen).length + rawLen;
    return { t, meta, rawLen, bodyLen };
  });
  const graphLen = entries.reduce((a, e) => a + 1 + varint(e.bodyLen).length + e.bodyLen, graphHead.length);
  if (graphLen > PROTOBUF_LIMIT) throw new Error(`the graph needs ${graphLen} bytes, over protobuf's 2 GiB limit`);
  const fh = await open(path, 'w');
  try {
    await fh.write(head);
    await fh.write(Buffer.concat([Buffer.from([TAG_MODEL_GRAPH]), varint(graphLen), graphHead]));
    let done = 0;
    for (const { t, meta, rawLen, bodyLen } of entries) {
      const data = await t.load();
      if (data.byteLength !== rawLen) throw new Error(`initializer ${t.name}: got ${data.byteLength} bytes for dims [${t.dims.join(', ')}] ${t.type}, expected ${rawLen}`);
      await fh.write(Buffer.concat([Buffer.from([TAG_GRAPH_INITIALIZER]), varint(bodyLen), meta, Buffer.from([TAG_TENSOR_RAW_DATA]), varint(rawLen)]));
      await fh.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      onTensor?.(++done, entries.length);
    }
  } finally {
    await fh.close();
  }
  return head.length + 1 + varint(graphLen).length + graphLen;
}
