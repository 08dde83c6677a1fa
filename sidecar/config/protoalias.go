package config

import (
	"bytes"
	"encoding/binary"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// A watch event of a shard is a protobuf frame of some 280 KiB (100,000
// keys) in which the shard document sits three envelopes deep (WatchEvent,
// RawExtension, runtime.Unknown, Secret). client-go's generated decoders
// copy it at each level that holds it as bytes: the frame, the event's raw
// object, the Unknown's raw Secret and the Secret's data, four copies of
// which the last is applied and all are garbage right after. Here the event
// and a Secret are decoded in place: the raw object and the Secret's data
// are slices of the frame (read into a buffer of its own, never reused),
// and only the metadata is copied. Anything else (another kind, a content
// encoding, a malformed message) goes to client-go's decoders unchanged.

// protobufMagic starts every object the API server encodes as protobuf
// (k8s.io/apimachinery/pkg/runtime/serializer/protobuf).
var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00}

var secretKind = corev1.SchemeGroupVersion.WithKind("Secret")

// protoFields calls fn with each field of the protobuf message m: its
// number, its wire type, and its value (varint) or its bytes (length
// delimited, a slice of m). It reports false when m is malformed or fn
// returns false.
func protoFields(m []byte, fn func(num int, wire int, v uint64, b []byte) bool) bool {
	for len(m) > 0 {
		key, n := binary.Uvarint(m)
		// The generated decoders take the field number as an int32 of the
		// key shifted (truncated), and refuse it unless positive.
		num, wire := int(int32(key>>3)), int(key&7) //nolint:gosec // truncated as the generated decoders do
		if n <= 0 || num <= 0 {
			return false
		}
		m = m[n:]
		var v uint64
		var b []byte
		switch wire {
		case 0: // varint
			if v, n = binary.Uvarint(m); n <= 0 {
				return false
			}
			m = m[n:]
		case 1: // fixed64
			if len(m) < 8 {
				return false
			}
			m = m[8:]
		case 2: // length delimited
			l, n := binary.Uvarint(m)
			if n <= 0 || l > uint64(len(m)-n) { //nolint:gosec // len(m) ≥ n > 0
				return false
			}
			b, m = m[n:n+int(l)], m[n+int(l):] //nolint:gosec // l ≤ len(m)
		case 5: // fixed32
			if len(m) < 4 {
				return false
			}
			m = m[4:]
		default:
			return false
		}
		if !fn(num, wire, v, b) {
			return false
		}
	}
	return true
}

// wireOK reports whether field num of a message came with its wire type:
// wires[i] is field i+1's. Fields the message does not have are skipped,
// as the generated decoders skip them; a known field with another wire
// type is an error for them, and so the message is not decoded here.
func wireOK(num, wire int, wires ...int) bool {
	return num > len(wires) || wires[num-1] == wire
}

// aliasWatchEvent decodes the protobuf WatchEvent frame into ev with its
// raw object a slice of frame; false when frame is not one.
func aliasWatchEvent(frame []byte, ev *metav1.WatchEvent) bool {
	*ev = metav1.WatchEvent{}
	return protoFields(frame, func(num, wire int, _ uint64, b []byte) bool {
		if !wireOK(num, wire, 2, 2) {
			return false
		}
		switch {
		case num == 1 && wire == 2: // type
			ev.Type = string(b)
		case num == 2 && wire == 2: // object (RawExtension)
			return protoFields(b, func(num, wire int, _ uint64, raw []byte) bool {
				if !wireOK(num, wire, 2) {
					return false
				}
				if num == 1 {
					ev.Object.Raw = raw
				}
				return true
			})
		}
		return true
	})
}

// aliasSecret decodes data, a protobuf-encoded object, when it is a core/v1
// Secret: its data values are slices of data. false for anything else.
func aliasSecret(data []byte) (*corev1.Secret, bool) {
	if !bytes.HasPrefix(data, protobufMagic) {
		return nil, false
	}
	var apiVersion, kind, encoding string
	var raw []byte
	ok := protoFields(data[len(protobufMagic):], func(num, wire int, _ uint64, b []byte) bool {
		if !wireOK(num, wire, 2, 2, 2, 2) {
			return false
		}
		switch num {
		case 1: // typeMeta
			return protoFields(b, func(num, wire int, _ uint64, b []byte) bool {
				if !wireOK(num, wire, 2, 2) {
					return false
				}
				switch {
				case num == 1 && wire == 2:
					apiVersion = string(b)
				case num == 2 && wire == 2:
					kind = string(b)
				}
				return true
			})
		case 2:
			raw = b
		case 3:
			encoding = string(b)
		}
		return true
	})
	if !ok || apiVersion != "v1" || kind != "Secret" || encoding != "" {
		return nil, false
	}
	s := &corev1.Secret{}
	ok = protoFields(raw, func(num, wire int, v uint64, b []byte) bool {
		if !wireOK(num, wire, 2, 2, 2, 2, 0) {
			return false
		}
		switch {
		case num == 1 && wire == 2:
			return s.ObjectMeta.Unmarshal(b) == nil
		case num == 2 && wire == 2:
			key, value, ok := protoMapEntry(b)
			if ok {
				if s.Data == nil {
					s.Data = map[string][]byte{}
				}
				s.Data[key] = value
			}
			return ok
		case num == 3 && wire == 2:
			s.Type = corev1.SecretType(b)
		case num == 4 && wire == 2:
			key, value, ok := protoMapEntry(b)
			if ok {
				if s.StringData == nil {
					s.StringData = map[string]string{}
				}
				s.StringData[key] = string(value)
			}
			return ok
		case num == 5 && wire == 0:
			immutable := v != 0
			s.Immutable = &immutable
		}
		return true
	})
	if !ok {
		return nil, false
	}
	s.SetGroupVersionKind(secretKind)
	return s, true
}

// protoMapEntry decodes an entry of a protobuf map<string, bytes>: its key,
// and its value as a slice of b (empty, not nil, when absent, as the
// generated decoders leave it).
func protoMapEntry(b []byte) (string, []byte, bool) {
	var key string
	value := []byte{}
	ok := protoFields(b, func(num, wire int, _ uint64, f []byte) bool {
		if !wireOK(num, wire, 2, 2) {
			return false
		}
		switch {
		case num == 1 && wire == 2:
			key = string(f)
		case num == 2 && wire == 2:
			value = f
		}
		return true
	})
	return key, value, ok
}

// aliasingDecoder decodes protobuf Secrets with aliasSecret and everything
// else with the decoder it wraps.
type aliasingDecoder struct{ runtime.Decoder }

func (d aliasingDecoder) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if into == nil {
		if s, ok := aliasSecret(data); ok {
			gvk := secretKind
			return s, &gvk, nil
		}
	}
	return d.Decoder.Decode(data, defaults, into)
}
