// Output tensors' bytes as transferable ArrayBuffers, for the workers' answers.

/** The whole buffer behind `view` when the view spans all of it, else a copy: ORT may hand out views on memory it keeps. */
export function owned(view: ArrayBufferView): ArrayBuffer {
  const whole = view.byteOffset === 0 && view.byteLength === view.buffer.byteLength && view.buffer instanceof ArrayBuffer;
  return whole ? (view.buffer) : (view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength) as ArrayBuffer);
}
