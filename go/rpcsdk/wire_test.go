package rpcsdk

import (
	"encoding/binary"
	"testing"
)

func header4(kind byte, name string, seqid int32, body ...byte) []byte {
	p := binary.BigEndian.AppendUint32(nil, strictVersion|uint32(kind))
	p = binary.BigEndian.AppendUint32(p, uint32(len(name)))
	p = append(p, name...)
	p = binary.BigEndian.AppendUint32(p, uint32(seqid))
	return append(p, body...)
}

func TestStripServiceKeepsSeqidAndBody(t *testing.T) {
	p := header4(typeCall, "echo:add", 77, 1, 2, 3, 0)
	h, err := parseHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	out, nh := stripService(p, h)
	want := header4(typeCall, "add", 77, 1, 2, 3, 0)
	if string(out) != string(want) || string(nh.name) != "add" || nh.seqid != 77 || nh.body != len(want)-4 {
		t.Errorf("got %x (%s, %d, %d), want %x", out, nh.name, nh.seqid, nh.body, want)
	}
	bare := header4(typeCall, "add", 1)
	if h, _ := parseHeader(bare); func() bool { o, _ := stripService(bare, h); return &o[0] != &bare[0] }() {
		t.Errorf("a bare name was copied")
	}
}

func TestRejectsNonStrictAndBadHeaders(t *testing.T) {
	old := append(binary.BigEndian.AppendUint32(nil, 4), "echo"...)
	old = append(old, typeCall, 0, 0, 0, 1)
	if _, err := parseHeader(old); err != errNotStrict {
		t.Errorf("non-strict header: %v", err)
	}
	if _, err := parseHeader(header4(typeCall, "x", 1)[:8]); err == nil {
		t.Errorf("truncated header accepted")
	}
	bad := header4(typeCall, "x", 1)
	binary.BigEndian.PutUint32(bad[4:], 1000)
	if _, err := parseHeader(bad); err == nil {
		t.Errorf("name length past the end accepted")
	}
}
